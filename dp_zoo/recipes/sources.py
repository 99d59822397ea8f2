"""Published training configurations, every number with the place it was read.

This table is the one place where numbers taken from publications live:
``recipes.py`` builds the recipes named after a publication from it, and
``tests/train/test_recipes.py`` checks that each such recipe is exactly its
entry here and that dp_zoo's accountant reproduces the ε the source states.
A recipe that is not built from an entry here is dp_zoo's own choice and
shows no published accuracy.

What could be read for this table (2026-12-04):

- De et al. 2022 (arXiv 2204.13650) publish their hyper-parameters in
  appendix C.5 (so the jax_privacy maintainers, google-deepmind/jax_privacy
  issue #6). That appendix could not be read here; what could is the
  official jax_privacy configs at the paper's reproduction commit 0e9d939
  (Release v0.2; docs/paper_reproductions.md of later versions points to
  it): CIFAR-10 WRN-16-4 ε=1, ImageNet NF-ResNet-50 ε=8, CIFAR-100 WRN-28-10
  ε=1 fine-tuning. No config of theirs exists for CIFAR-10 ε=2/4/8, WRN-40-4
  or NFNet-F3.
- Sander, Stock, Sablayrolles 2023, "TAN without a burn" (arXiv 2210.03403):
  the README of facebookresearch/tan @9d8be82 gives two reference runs
  (CIFAR-10 ε=8 and ImageNet NF-ResNet-50 ε=8) as commands; what the command
  does not pass is the argparse default of the script it runs.

Accuracies: a figure is attached only where the source states it for this
very configuration. The abstract of De et al. gives 81.4% (WRN-40-4, ε=8),
83.8% and 86.7% (NFNet-F3 fine-tuning, ε=0.5 and 8), but for configurations
whose hyper-parameters could not be read here, so no entry carries them; the
figures dp_zoo printed before (56.8% for WRN-16-4 ε=1, 32.4% for NF-ResNet-50
ε=8, and others) could not be checked against a readable source and are not
shown either.

This module imports nothing from dp_zoo.
"""

import dataclasses
from typing import Optional

DE2022 = "De et al. 2022 (arXiv 2204.13650)"
TAN2023 = "Sander et al. 2023, TAN (arXiv 2210.03403)"
# Short labels for tables.
LABELS = {DE2022: "De2022", TAN2023: "TAN2023"}
_JAXP = "google-deepmind/jax_privacy@0e9d939 jax_privacy/experiments/image_classification/configs/"
_TAN = "facebookresearch/tan@9d8be82 "

# The settings every published entry cites, in this order.
SETTINGS = ("model", "dataset", "batch_size", "steps", "noise_multiplier", "l2_clip", "delta",
            "augmult", "learning_rate", "momentum", "ema_decay", "weight_decay")


@dataclasses.dataclass(frozen=True)
class Published:
    """A configuration as a publication states it.

    Attributes:
      publication: whose configuration it is.
      settings: ``{setting: (value, citation)}`` for every name in ``SETTINGS``.
      epsilon: the ε the source states for it.
      dataset_size: the N of the source's training split (its ε is for that N).
      accuracy: the source's top-1 (%) for exactly this configuration, or None.
      accuracy_source: where ``accuracy`` is stated.
      differences: what dp_zoo's recipe cannot reproduce of it (pipeline
        details, schedules), for the recipe's notes.
    """

    publication: str
    settings: dict
    epsilon: float
    dataset_size: int
    accuracy: Optional[float] = None
    accuracy_source: str = ""
    differences: str = ""

    def value(self, setting):
        return self.settings[setting][0]


def _cite(where, **values):
    """``{setting: (value, where + detail)}`` from ``setting=(value, detail)``."""
    return {k: (v, f"{where}{detail}") for k, (v, detail) in values.items()}


_WRN16_4_EPS1 = "cifar10_wrn_16_4_eps1.py"
_NF50_EPS8 = "imagenet_nf_resnet_50_eps8.py"
_WRN28_FT = "cifar100_wrn_28_10_eps1_finetune.py"

PUBLISHED = {
    "de2022_cifar10_wrn16_4_eps1": Published(
        DE2022,
        _cite(_JAXP + _WRN16_4_EPS1,
              model=("wrn16_4", ": model wideresnet depth=16 width=4"),
              dataset=("cifar10", ": Cifar10Loader"),
              batch_size=(4096, ": batch_size.total"),
              steps=(875, ": num_updates"),
              noise_multiplier=(10.0, ": dp.noise_multiplier"),
              l2_clip=(1.0, ": dp.clipping_norm"),
              delta=(1e-5, ": dp.delta"),
              augmult=(16, ": augmult_config.augmult (random flip and crop)"),
              learning_rate=(2.0, ": sgd_config constant_lr_config(2.0)"),
              momentum=(0.0, ": sgd_config without momentum"),
              ema_decay=(0.999, ": averaging.ema_coefficient"),
              weight_decay=(0.0, ": training.weight_decay")),
        epsilon=1.0, dataset_size=50_000,
    ),
    "de2022_imagenet_nf_resnet50_eps8": Published(
        DE2022,
        _cite(_JAXP + _NF50_EPS8,
              model=("nf_resnet50", ": model nf_resnet variant ResNet50"),
              dataset=("imagenet2012", ": ImageNetLoader, image_size (224, 224)"),
              batch_size=(16384, ": batch_size.total"),
              steps=(71_589, ": num_updates"),
              noise_multiplier=(2.5, ": dp.noise_multiplier"),
              l2_clip=(1.0, ": dp.clipping_norm"),
              delta=(8e-7, ": dp.delta"),
              augmult=(4, ": augmult_config.augmult (random flip and crop)"),
              learning_rate=(4.0, ": sgd_config constant_lr_config(4.0)"),
              momentum=(0.0, ": sgd_config without momentum"),
              ema_decay=(0.99999, ": averaging.ema_coefficient"),
              weight_decay=(0.0, ": training.weight_decay")),
        # jax_privacy trains on ImageNet's train split less 10,000 held-out images.
        epsilon=8.0, dataset_size=1_271_167,
        differences="jax_privacy holds out 10,000 train images (N=1,271,167); dp_zoo trains on TFDS's "
                    "1,281,167, so q, and the accountant's ε, are slightly smaller.",
    ),
    "de2022_cifar100_wrn28_10_finetune_eps1": Published(
        DE2022,
        _cite(_JAXP + _WRN28_FT,
              model=("wrn28_10", ": model wideresnet depth=28 width=10, restored from WRN_28_10_IMAGENET32"),
              dataset=("cifar100", ": Cifar100Loader"),
              batch_size=(16384, ": batch_size.total"),
              steps=(250, ": num_updates"),
              noise_multiplier=(21.1, ": dp.noise_multiplier"),
              l2_clip=(1.0, ": dp.clipping_norm"),
              delta=(1e-5, ": dp.delta"),
              augmult=(16, ": augmult_config.augmult (random flip and crop)"),
              learning_rate=(1.0, ": sgd_config constant_lr_config(1.0)"),
              momentum=(0.0, ": sgd_config without momentum"),
              ema_decay=(0.9, ": averaging.ema_coefficient"),
              weight_decay=(0.0, ": training.weight_decay")),
        epsilon=1.0, dataset_size=50_000,
        differences="jax_privacy resets the classifier ('wide_res_net/Softmax') of the ImageNet32 "
                    "checkpoint; dp_zoo's --init re-initialises a classifier of another class count.",
    ),
    "tan2023_cifar10_wrn16_4_eps8": Published(
        TAN2023,
        {**_cite(_TAN + "README.md, 'WideResNet on CIFAR-10' final run",
                 batch_size=(4096, ": --batch_size 4096 --ref_B 4096"),
                 steps=(2500, ": --ref_nb_steps 2500"),
                 noise_multiplier=(3.0, ": --ref_noise 3"),
                 augmult=(16, ": --transform 16")),
         **_cite(_TAN + "cifar10.py argparse default",
                 model=("wrn16_4", "s --WRN_depth 16 --WRN_k 4"),
                 dataset=("cifar10", ": prepare_data_cifar"),
                 l2_clip=(1.0, " --max_per_sample_grad_norm 1"),
                 delta=(1e-5, " --delta 1e-5"),
                 learning_rate=(4.0, " --lr 4"),
                 momentum=(0.0, " --momentum 0"),
                 ema_decay=(0.9999, ": src/models/EMA_without_class.py update(decay=0.9999)"),
                 weight_decay=(0.0, ": optim.SGD without weight_decay"))},
        epsilon=8.0, dataset_size=50_000,
        differences="the README calls this run eps=8, but for its sigma, steps, q and delta dp_zoo's accountant "
                    "gives less (the figure is recipe_epsilons' note): the run spends less than its label, and "
                    "sigma is kept. TAN's WRN uses 16 GroupNorm groups; dp_zoo's uses its own normalisation "
                    "(the EMA warm-up, decay min(0.9999, (1+t)/(10+t)), is the same in both).",
    ),
    "tan2023_imagenet_nf_resnet50_eps8": Published(
        TAN2023,
        {**_cite(_TAN + "README.md, 'NF-ResNet or ResNet on ImageNet' final run",
                 batch_size=(32768, ": --batch_size 32768 --ref_B 32768"),
                 steps=(18_000, ": --ref_nb_steps 18000"),
                 noise_multiplier=(2.5, ": --ref_noise 2.5"),
                 augmult=(8, ": --transform 8")),
         **_cite(_TAN + "imagenet.py argparse default",
                 model=("nf_resnet50", " --architecture nf_resnet50"),
                 dataset=("imagenet2012", " --dataset imagenet"),
                 l2_clip=(1.0, " --max_per_sample_grad_norm 1"),
                 delta=(8e-7, " --delta 8e-7"),
                 learning_rate=(32.0, " --lr 32"),
                 momentum=(0.0, " --momentum 0"),
                 ema_decay=(0.99999, " --model_ema_decay 0.99999"),
                 weight_decay=(0.0, ": src/models/prepare_models.py optim.SGD without weight_decay"))},
        epsilon=8.0, dataset_size=1_281_167,
        differences="TAN's ImageNet augmentation ('OursBest' augmult, 'center' transform), its EMA warm-up "
                    "and timm's NF-ResNet-50 differ from dp_zoo's imagenet augmult style, EMA and "
                    "DeepMind-convention NF-ResNet-50.",
    ),
}

# Configurations only partly a publication's, and not read from it: De et al. 2022's CIFAR-10
# noise multipliers for eps = 2, 4 and 8 (WRN-16-4 and WRN-40-4, B = 4,096, K = 16), as
# remembered from the paper's appendix C.5 by the author of dp_zoo issue #30. That appendix
# could not be read here (above), so every sigma below is unverified. eps = 2's step count is
# inferred, not remembered: sigma 6 with 1,125 steps is the configuration whose RDP eps at
# delta = 1e-5, N = 50,000 is 2.000, which makes it almost certainly the paper's. For eps = 4
# and 8 no step count is known: recipes.py takes the largest the budget allows (dp_zoo's RDP
# accountant; tests/train/test_recipes.py recomputes it). None of them carries an accuracy.


@dataclasses.dataclass(frozen=True)
class Unverified:
    """A configuration partly from a publication, not read from it.

    Attributes:
      publication: whose numbers these are meant to be.
      label: a short label for tables (no spaces).
      what: whose configuration it is, in a few words (the zoo's "configuration" column).
      noise_multiplier: sigma, as remembered from the publication.
      steps: the publication's step count, or None where dp_zoo computes it.
      epsilon: the budget the configuration is for.
      how: where each number comes from and how sure it is, for the recipe's notes.
    """

    publication: str
    label: str
    what: str
    noise_multiplier: float
    steps: Optional[int]
    epsilon: float
    how: str


_REMEMBERED = "as remembered from De et al. 2022's appendix C.5, not read here (unverified)"
INFERRED_LABEL, SIGMA_LABEL = "De2022~", "De2022s"
UNVERIFIED = {
    "de2022_cifar10_eps2": Unverified(
        DE2022, INFERRED_LABEL, "almost certainly De et al. 2022's configuration (inferred)", 6.0, 1125, 2.0,
        f"Almost certainly De et al. 2022's configuration: sigma 6 ({_REMEMBERED}) with 1,125 steps at B = 4,096 "
        "gives RDP eps = 2.000 at delta = 1e-5, N = 50,000, which is how the step count was inferred; neither "
        "number was read from the paper. The other settings are those of its eps = 1 configuration "
        "(jax_privacy's cifar10_wrn_16_4_eps1.py: K 16, lr 2, EMA 0.999), which may differ from the paper's "
        "for eps = 2."),
    "de2022_cifar10_eps4": Unverified(
        DE2022, SIGMA_LABEL, "the paper's sigma, steps computed by dp_zoo", 4.0, None, 4.0,
        f"The paper's sigma, steps computed by dp_zoo: sigma 4 ({_REMEMBERED}); the step count is the largest "
        "whose RDP eps at delta = 1e-5, N = 50,000 stays <= 4 (dp_zoo's accountant), not the paper's. The other "
        "settings are those of its eps = 1 configuration (jax_privacy's cifar10_wrn_16_4_eps1.py)."),
    "de2022_cifar10_eps8": Unverified(
        DE2022, SIGMA_LABEL, "the paper's sigma, steps computed by dp_zoo", 3.0, None, 8.0,
        f"The paper's sigma, steps computed by dp_zoo: sigma 3 ({_REMEMBERED}); the step count is the largest "
        "whose RDP eps at delta = 1e-5, N = 50,000 stays <= 8 (dp_zoo's accountant), not the paper's. The other "
        "settings are those of its eps = 1 configuration (jax_privacy's cifar10_wrn_16_4_eps1.py)."),
}

# The MNIST recipes (dp_zoo's own: no publication ran a WS-WRN on MNIST with these settings)
# start from public settings only, each cited; python -m dp_zoo.tune searches around them.
# Tramer & Boneh 2021's end-to-end CNN on MNIST (98.1% at eps = 3, delta = 1e-5, stated in
# the README) gives the optimisation; De et al. 2022 the architecture family (WS-WideResNet
# with GroupNorm, models/wide_resnet.py) and the EMA of the weights.
TRAMER_BONEH2021 = "Tramer & Boneh 2021 (arXiv 2011.11660)"
_TB_README = "ftramer/Handcrafted-DP@2a1c3a8 README.md, 'End-to-end CNNs'"
_TB_CNNS = "ftramer/Handcrafted-DP@1d31943 cnns.py argparse default"
MNIST_BASE = {
    "batch_size": (512, f"{TRAMER_BONEH2021}: {_TB_README}: cnns.py --dataset=mnist --batch_size=512"),
    "epochs": (40, f"{TRAMER_BONEH2021}: {_TB_README}: the noise multipliers consume the budget in 40 epochs "
                   "(MNIST)"),
    "learning_rate": (0.5, f"{TRAMER_BONEH2021}: {_TB_README}: --lr=0.5"),
    "momentum": (0.9, f"{TRAMER_BONEH2021}: {_TB_CNNS} --momentum 0.9 (SGD)"),
    "l2_clip": (0.1, f"{TRAMER_BONEH2021}: {_TB_CNNS} --max_grad_norm 0.1"),
    "delta": (1e-5, f"{TRAMER_BONEH2021}: {_TB_README}: (epsilon=3, delta=1e-5)"),
    "augmult": (1, f"{TRAMER_BONEH2021}: {_TB_CNNS} --augment off (no augmentation); De et al. 2022 use 16 "
                   "views on CIFAR-10, 16 times the compute, too much for 2 CPU cores"),
    "ema_decay": (0.999, f"{DE2022}: {_JAXP}{_WRN16_4_EPS1}: averaging.ema_coefficient"),
    "weight_decay": (0.0, f"{DE2022}: {_JAXP}{_WRN16_4_EPS1}: training.weight_decay"),
}
# Tramer & Boneh's own grid (their CIFAR-10 search script; the lr is per 512 examples of batch)
# and the classic split of MNIST's 60,000 training images (mnist.pkl.gz: 50,000 + 10,000).
_TB_GRID = "ftramer/Handcrafted-DP@5eddb46 scripts/run_cnns_cifar10.py"
MNIST_GRID_SOURCES = {
    "base_lrs": ((0.125, 0.25, 0.5, 1.0), f"{TRAMER_BONEH2021}: {_TB_GRID}: BASE_LRS (lr = (B // 512) * base)"),
    "validation_size": (10_000, "the classic mnist.pkl.gz split of the 60,000 training images: 50,000 "
                                "training, 10,000 validation (LeCun et al.'s MNIST as the deeplearning.net "
                                "tutorials distributed it)"),
}

# TAN's own simulations of its reference runs (README, "First imitate training ..."): the
# batch size it simulates at; sigma is divided by the same factor, the steps stay.
TAN_SIMULATION = {
    "tan2023_cifar10_wrn16_4_eps8": (256, _TAN + "README.md: --batch_size 256 --ref_B 4096 --ref_noise 3"),
    "tan2023_imagenet_nf_resnet50_eps8": (256, _TAN + "README.md: --batch_size 256 --ref_B 32768 --ref_noise 2.5"),
}
