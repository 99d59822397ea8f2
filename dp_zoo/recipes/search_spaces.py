"""Named search spaces for ``python -m dp_zoo.tune``: a base configuration and a grid taken from
public information only, each value with where it comes from.

A private tuning (docs/privacy.md, "Hyper-parameter tuning") covers the
search over its grid, not the choice of the grid and of the base
configuration: if they were chosen by looking at the same data, that look is
not in the card's epsilon. The card therefore records where they came from
(``privacy.tuning.search_space_source``), and the spaces here are chosen from
publications and from facts about the data's format (image size, classes),
never from a run on the data. ``benchmarks/digits_search.py`` searched the
digits data without privacy: nothing here takes a number from it.

Every numeric choice names its source; ``tests/test_search_spaces.py``
recomputes the derived ones from ``sources`` (De et al. 2022's
released configurations, each number cited there).
"""

import dataclasses

from dp_zoo.recipes import sources as recipe_sources
from dp_zoo.recipes.builders import MNIST_N
from dp_zoo.recipes.config import AugmultConfig, EMAConfig, OptimConfig

_DE = recipe_sources.PUBLISHED
_CIFAR10 = "de2022_cifar10_wrn16_4_eps1"
_IMAGENET = "de2022_imagenet_nf_resnet50_eps8"
_CIFAR100_FT = "de2022_cifar100_wrn28_10_finetune_eps1"
DE2022_CONFIGS = (_CIFAR10, _IMAGENET, _CIFAR100_FT)


def de2022_epochs(key):
    """Epochs of one of De et al.'s released configurations: steps * B / N."""
    p = _DE[key]
    return p.value("steps") * p.value("batch_size") / p.dataset_size


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A base configuration and a grid, chosen before any trial from public sources.

    Attributes:
      name: what ``--space`` takes.
      recipes: the recipes it applies to (their data set and budget).
      settings: ``{setting: (value, source)}`` applied to the recipe's config
        (``apply``); setting names as ``apply`` knows them.
      grid: ``{grid key: (values, source)}`` (keys of ``dp_zoo.tune.GRID_KEYS``).
      source: the short text the card records as
        ``privacy.tuning.search_space_source``.
    """

    name: str
    recipes: tuple
    settings: dict
    grid: dict
    source: str

    def grid_items(self):
        """The grid as ``--grid`` items (``KEY=V1,V2``)."""
        return [f"{k}={','.join(str(v) for v in vals)}" for k, (vals, _) in self.grid.items()]

    def apply(self, config):
        """``config`` (the recipe's) with this space's base settings."""
        s = {k: v for k, (v, _) in self.settings.items()}
        return config.replace(
            model=s["model"], batch_size=s["batch_size"],
            physical_batch_size=min(s["physical_batch_size"], s["batch_size"]),
            dp=dataclasses.replace(config.dp, l2_clip=s["l2_clip"], delta=s["delta"]),
            augmult=AugmultConfig(num_views=s["augmult"], style=s["augmentation"], pad=s["pad"],
                                  augment_first_view=s["augmentation"] != "none"),
            ema=EMAConfig(decay=s["ema_decay"]),
            optim=OptimConfig(name="sgd", learning_rate=s["learning_rate"], momentum=s["momentum"],
                              weight_decay=s["weight_decay"], schedule="constant"),
        )


def _digits_public():
    lrs = sorted({_DE[k].value("learning_rate") for k in DE2022_CONFIGS})  # 1, 2, 4
    epochs = de2022_epochs(_CIFAR10)  # 875 * 4096 / 50,000 = 71.7
    settings = {
        "model": ("wrn_digits", "WRN-10-1: the smallest member (one block per stage, width 1) of the "
                  "weight-standardised, group-normalised WRN family of De et al. 2022, for 8x8 images"),
        "batch_size": (256, "q = 256/1,137 = 0.225, inside the q of De et al.'s released configurations "
                       "(4096/50,000 = 0.08 to 16384/50,000 = 0.33); they find large batches best"),
        "physical_batch_size": (128, "memory only (no effect on what is computed)"),
        "l2_clip": (1.0, "C = 1 in all three of De et al.'s released configurations"),
        "delta": (1e-5, "De et al.'s CIFAR delta; below 1/N for N = 1,137"),
        "augmult": (4, "De et al.'s ImageNet configuration (their CIFAR ones use 16, 4x the CPU time)"),
        "augmentation": ("crop", "random crops as De et al.'s augmult, without flips: a mirrored digit is "
                         "not the same digit"),
        "pad": (1, "1/8 of the 8-pixel side, as 4 pixels of CIFAR's 32 in dp_zoo's CIFAR augmentation"),
        "ema_decay": (_DE[_CIFAR10].value("ema_decay"), "De et al.'s CIFAR-10 configuration (0.999), with "
                      "dp_zoo's EMA warm-up min(mu, (1+t)/(10+t)) as theirs"),
        "learning_rate": (lrs[0], "replaced by the grid"),
        "momentum": (0.0, "SGD without momentum in all three of De et al.'s configurations"),
        "weight_decay": (0.0, "none in all three of De et al.'s configurations"),
    }
    grid = {
        "lr": (tuple(lrs), "the constant learning rates of De et al.'s three released configurations "
               "(CIFAR-100 fine-tuning 1, CIFAR-10 2, ImageNet 4)"),
        "steps": ((160, 320), f"{epochs:.1f} epochs as De et al.'s CIFAR-10 configuration (875 steps at "
                  "B 4096, N 50,000) is 318 steps at q = 256/1,137, rounded to 320; and half of it, to "
                  "bound a trial's CPU time"),
    }
    source = ("dp_zoo search space 'digits_public' (dp_zoo/recipes/search_spaces.py), from public sources "
              "only, no run on this data: De et al. 2022 (arXiv 2204.13650) released configurations "
              "(jax_privacy@0e9d939): WS+GroupNorm WRN (smallest, WRN-10-1), C=1, SGD without momentum "
              "or weight decay, constant lr in {1, 2, 4} (their three configurations), EMA 0.999, "
              "augmult 4 (their ImageNet value), q=0.225 within their 0.08-0.33, 72 epochs (their "
              "CIFAR-10 875 steps x 4096/50,000) = 320 steps and half of it; crop padding 1/8 of the "
              "side, no flips (they change a digit)")
    return SearchSpace("digits_public", tuple(f"wrn_digits_eps{e}" for e in (1, 2, 4, 8)), settings, grid, source)


def mnist_steps(epochs, validation_size=recipe_sources.MNIST_GRID_SOURCES["validation_size"][0]):
    """Steps of ``epochs`` epochs of Tramer & Boneh's expected batch on MNIST's training split less ``validation_size``."""
    return round(epochs * (MNIST_N - validation_size) / recipe_sources.MNIST_BASE["batch_size"][0])


def _mnist_public():
    tb = {k: v for k, (v, _) in recipe_sources.MNIST_BASE.items()}
    why = {k: w for k, (_, w) in recipe_sources.MNIST_BASE.items()}
    grid_src = recipe_sources.MNIST_GRID_SOURCES
    base_lrs, epochs = grid_src["base_lrs"][0], tb["epochs"]
    settings = {
        "model": ("wrn_mnist", "WS-WideResNet of depth 10, 8/16/32 channels (De et al. 2022's family, sized for "
                  "2 CPU cores: dp_zoo's choice, made before any run on MNIST)"),
        "batch_size": (tb["batch_size"], why["batch_size"]),
        "physical_batch_size": (256, "memory only (no effect on what is computed)"),
        "l2_clip": (tb["l2_clip"], why["l2_clip"]),
        "delta": (tb["delta"], why["delta"]),
        "augmult": (tb["augmult"], why["augmult"]),
        "augmentation": ("none", why["augmult"]),
        "pad": (0, "no augmentation"),
        "ema_decay": (tb["ema_decay"], why["ema_decay"]),
        "learning_rate": (tb["learning_rate"], "replaced by the grid"),
        "momentum": (tb["momentum"], why["momentum"]),
        "weight_decay": (tb["weight_decay"], why["weight_decay"]),
    }
    grid = {
        "lr": (tuple(lr for lr in base_lrs if lr >= tb["learning_rate"] / 2),
               f"Tramer & Boneh's base learning rates ({grid_src['base_lrs'][1]}) from half their MNIST "
               f"choice {tb['learning_rate']} up (B = 512: lr = base)"),
        "steps": ((mnist_steps(epochs // 2), mnist_steps(epochs)),
                  f"their MNIST {epochs} epochs ({why['epochs']}) and half of it, to bound a trial's CPU time, of "
                  f"B {tb['batch_size']} on the {recipe_sources.MNIST_GRID_SOURCES['validation_size'][0]:,}-"
                  "example validation split's complement (50,000)"),
    }
    source = ("dp_zoo search space 'mnist_public' (dp_zoo/recipes/search_spaces.py), from public sources only, "
              "no run on this data: Tramer & Boneh 2021 (arXiv 2011.11660; ftramer/Handcrafted-DP) end-to-end "
              "MNIST CNN settings: B 512, SGD momentum 0.9, C 0.1, no augmentation, delta 1e-5, 40 epochs and "
              "half; lr in {0.25, 0.5, 1} from their grid's base rates; De et al. 2022's WS-WRN family "
              "(wrn_mnist) and EMA 0.999; run with --validation-size 10000 (the classic 50,000 / 10,000 split)")
    return SearchSpace("mnist_public", tuple(f"wrn_mnist_eps{e}" for e in (1, 2, 4, 8)), settings, grid, source)


SPACES = {s.name: s for s in (_digits_public(), _mnist_public())}


def get(name, recipe_name):
    """The search space ``name`` for ``recipe_name``.

    Raises:
      ValueError: unknown space, or one not made for this recipe (one line naming the fix).
    """
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; known: {sorted(SPACES)}.")
    space = SPACES[name]
    if recipe_name not in space.recipes:
        raise ValueError(f"search space {name!r} is for the recipes {list(space.recipes)}, not {recipe_name!r}.")
    return space
