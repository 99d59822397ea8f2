"""``python -m dp_zoo.train``: private training, fine-tuning and publishing.

With no arguments it runs the embedded default: a real DP-SGD run on
scikit-learn's digits (recipe ``wrn_digits_eps8``, a few minutes on 2 CPU
cores), prints the test accuracy and the epsilon the accountant computed, and
publishes a loadable model with its card.

Examples::

    python -m dp_zoo.train                                  # embedded default
    python -m dp_zoo.train --recipe wrn16_4_cifar10_eps8    # reproduce a recipe
    python -m dp_zoo.train --model wrn16_4 --epsilon 4 --steps 1000
    python -m dp_zoo.train --recipe wrn16_4_cifar10_eps8 --tan-simulate 16
    python -m dp_zoo.train --model nfnet_f3 --init weights.keras
    python -m dp_zoo.train --model nfnet_f3 --init dm_nfnet_f3.safetensors   # timm weights

A run directory (``--run-dir``) holds checkpoints and the privacy journal;
re-running the same command with the same ``--run-dir`` resumes it.
"""

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

from dp_zoo.train import init_privacy, recipes

FLAGS = flags.FLAGS

flags.DEFINE_string("recipe", None, "Named recipe to reproduce (see --list-recipes).")
flags.DEFINE_string("model", None, "Architecture; uses its default recipe (see dp_zoo.list_architectures()).")
flags.DEFINE_bool("list-recipes", False, "List recipes and exit.")
flags.DEFINE_float("epsilon", None, "Target epsilon; sigma is calibrated for it unless --noise-multiplier is given.")
flags.DEFINE_float("delta", None, "Delta of the guarantee.")
flags.DEFINE_integer("batch-size", None, "Expected logical batch size B (q = B / N).")
flags.DEFINE_integer("physical-batch-size", None, "Micro-batch size (memory); the logical batch is accumulated.")
flags.DEFINE_integer("augmult", None, "Augmentation multiplicity K.")
flags.DEFINE_float("ema", None, "EMA decay (0 turns EMA off).")
flags.DEFINE_float("lr", None, "Learning rate.")
flags.DEFINE_integer("steps", None, "Number of noisy steps.")
flags.DEFINE_float("epochs", None, "Alternative to --steps: epochs of expected batches.")
flags.DEFINE_float("noise-multiplier", None, "sigma; if set with --epsilon, the epsilon is a budget guard.")
flags.DEFINE_float("l2-clip", None, "Per-example clipping norm C.")
flags.DEFINE_integer("seed", None, "Seed for sampling, augmentation and initialisation.")
flags.DEFINE_bool("non-private", False, "Train a non-private baseline (no clipping, no noise, no epsilon).")
flags.DEFINE_float("tan-simulate", None, "Run the TAN simulation with batch and sigma divided by this factor.")
flags.DEFINE_string("init", None, "Weights to fine-tune from: a .keras model of the same architecture, a zoo "
                    "model name, a DeepMind NFNet / jax_privacy WRN Haiku checkpoint, or a timm "
                    "state dict of an NF model (.pth/.pt/.bin/.safetensors, or .npz of numpy arrays); a classifier "
                    "of another class count is re-initialised.")
flags.DEFINE_bool("allow-nonprivate-init", False, "Allow an --init checkpoint trained on the same data set without "
                  "privacy; the result is then published as NOT differentially private (docs/privacy.md).")
flags.DEFINE_string("dataset", None, "Train on this data set instead of the recipe's (digits, cifar10, cifar100, "
                    "svhn_cropped, mnist, fashion_mnist, imagenet2012); sigma is recalibrated for its size.")
flags.DEFINE_string("data-dir", None, "TFDS data directory.")
flags.DEFINE_string("manual-dir", None, "TFDS manual download directory (ImageNet).")
flags.DEFINE_bool("streaming", None, "Stream the data set from its TFDS array_record files instead of loading "
                  "it into memory (default: only when it would not fit). Prepare it with "
                  "`tfds build NAME --file_format=array_record`.")
flags.DEFINE_integer("validation-size", None, "Hold out this many training examples as the evaluation split.")
flags.DEFINE_string("run-dir", None, "Run directory (checkpoints; resumes if it exists). Default runs/<name>.")
flags.DEFINE_alias("workdir", "run-dir")  # big_vision / timm users' name for it
flags.DEFINE_string("publish-dir", None, "Where to publish the model and card. Default: $DP_ZOO_HOME/<name> or ~/.cache/dp_zoo/<name>.")
flags.DEFINE_bool("publish", True, "Publish the trained model with its card.")
flags.DEFINE_bool("overwrite", False, "Replace an existing artifact in --publish-dir.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "With --strategy tpu: the TPU's name or grpc:// address (default: the one "
                    "the environment names, e.g. on a TPU VM).")
flags.DEFINE_integer("logical-cpus", None, "Split the CPU into N logical devices (try multi-replica runs on a CPU).")
flags.DEFINE_integer("eval-every", None, "Evaluate every N steps (0: only at the end).")
flags.DEFINE_integer("checkpoint-every", None, "Checkpoint every N steps.")
flags.DEFINE_bool("deterministic", None, "A reproducible run (tests, experiments): batch selection and noise are "
                  "derived from --seed and TensorFlow's op determinism is on. Published as NOT differentially "
                  "private: anyone who reads the seed can recompute the batches and subtract the noise.")
flags.DEFINE_bool("deterministic-noise", None, "Removed: use --deterministic (see docs/privacy.md).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


class UsageError(ValueError):
    """A bad flag combination (printed as one line, exit code 2)."""


def _flag(name):
    return FLAGS[name].value


def resolve(argv_flags=None):
    """Resolves recipe + flag overrides into ``(name, TrainConfig, Recipe)``."""
    if _flag("tpu") and _flag("strategy") != "tpu":
        raise UsageError("--tpu names the TPU for --strategy tpu; add --strategy tpu.")
    if _flag("recipe") and _flag("model"):
        raise UsageError("pass either --recipe or --model, not both (a recipe fixes its architecture).")
    if _flag("recipe"):
        recipe = recipes.get(_flag("recipe"))
    elif _flag("model"):
        model = _flag("model")
        from dp_zoo.models import list_architectures

        if model not in list_architectures():
            from dp_zoo.models._registry import unknown_name_message

            raise UsageError(unknown_name_message("architecture", model, list_architectures()))
        base = recipes.default_recipe_for(model)
        if base is None:
            raise UsageError(
                f"architecture {model!r} has no default recipe; pass --recipe, or one of: "
                f"{', '.join(sorted(recipes.DEFAULT_FOR_MODEL))}."
            )
        recipe = recipes.get(base)
        if model != recipe.config.model:
            # e.g. nfnet_f0 starts from the nfnet_f3 recipe: name it after the model run.
            renamed = recipe.name.replace(recipe.config.model, model, 1)
            if renamed == recipe.name:
                renamed = f"{model}_{recipe.name}"
            recipe = dataclasses.replace(recipe, name=renamed, config=recipe.config.replace(model=model))
    else:
        recipe = recipes.get(recipes.DEFAULT_RECIPE)
    c = recipe.config
    dp, aug, ema, optim, data = c.dp, c.augmult, c.ema, c.optim, c.data

    def positive(name, v, integer=False):
        if v is not None and not v > 0:
            raise UsageError(f"--{name} must be > 0, got {v}.")
        return v

    changes = {}
    if positive("batch-size", _flag("batch-size")) is not None:
        changes["batch_size"] = _flag("batch-size")
    if positive("physical-batch-size", _flag("physical-batch-size")) is not None:
        changes["physical_batch_size"] = _flag("physical-batch-size")
    if _flag("steps") is not None and _flag("epochs") is not None:
        raise UsageError("pass either --steps or --epochs, not both.")
    if positive("steps", _flag("steps")) is not None:
        changes.update(steps=_flag("steps"), epochs=None)
    if positive("epochs", _flag("epochs")) is not None:
        changes.update(epochs=_flag("epochs"), steps=None)
    if _flag("seed") is not None:
        changes["seed"] = _flag("seed")
    if _flag("eval-every") is not None:
        if _flag("eval-every") < 0:
            raise UsageError("--eval-every must be >= 0.")
        changes["eval_every"] = _flag("eval-every")
    if _flag("checkpoint-every") is not None:
        if _flag("checkpoint-every") < 1:
            raise UsageError("--checkpoint-every must be >= 1.")
        changes["checkpoint_every"] = _flag("checkpoint-every")
    if _flag("deterministic-noise") is not None:
        raise UsageError("--deterministic-noise was replaced by --deterministic, which seeds batch selection and "
                         "noise from --seed and publishes the run as NOT differentially private.")
    if _flag("deterministic") is not None:
        changes["deterministic"] = _flag("deterministic")
    if _flag("init"):
        init = _flag("init")
        fmt = init_format(init)
        if fmt is None:
            if not os.path.exists(init):
                raise UsageError(f"--init {init}: no such file, and no published zoo model of that name "
                                 "(python -m dp_zoo.zoo lists them).")
            raise UsageError(
                f"--init {init}: unknown weight format; pass a .keras model, a zoo model name, a timm "
                f"state dict ({', '.join(TIMM_SUFFIXES)}) or a Haiku checkpoint "
                f"({', '.join(HAIKU_SUFFIXES + ('.npz',))})."
            )
        changes["init_checkpoint"] = f"zoo:{init}" if fmt == "zoo" else os.path.abspath(init)
        if fmt == "zoo":
            arch = zoo_architecture(init)
            if arch != c.model:
                raise UsageError(f"--init {init} is a {arch} model; this run trains {c.model}. "
                                 f"Pass --model {arch}, or weights of {c.model}.")
            from dp_zoo import zoo

            try:
                zoo.locate(init)  # published and verified, before any data is loaded
            except Exception as e:
                raise UsageError(f"--init {init}: {e}") from None
        if fmt == "haiku" and _haiku_family(c.model) is None:
            raise UsageError(
                f"--init {init} is a Haiku checkpoint, which dp_zoo converts into NFNets (DeepMind's) and "
                f"WideResNets (jax_privacy's), not {c.model!r}; pass a .keras model instead."
            )
        if fmt == "timm":
            family = _nf_family(c.model)
            if family is None:
                raise UsageError(
                    f"--init {init} is a timm state dict, which dp_zoo converts only for the "
                    f"NF-ResNet/NFNet families, not {c.model!r}; pass a .keras model instead."
                )
            from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS

            # timm's weights are only right under timm's layer conventions
            # (padding, gains, epsilon); the config records them.
            kw = dict(c.model_kwargs)
            kw.update(TIMM_CONVENTIONS[family])
            changes["model_kwargs"] = tuple(sorted(kw.items()))
    elif recipes.requires_init(recipe):
        raise UsageError(
            f"recipe {recipe.name} fine-tunes from {recipe.config.init_checkpoint}, which dp_zoo cannot "
            "ship: pass --init (a .keras model, a zoo model name, a Haiku checkpoint, or for NF models a timm "
            f"state dict, of {c.model}). To train from scratch instead, use a from-scratch recipe: "
            f"{_from_scratch_hint(c.model)}."
        )

    if _flag("non-private"):
        if any(_flag(f) is not None for f in ("epsilon", "noise-multiplier", "tan-simulate")):
            raise UsageError("--non-private cannot be combined with --epsilon/--noise-multiplier/--tan-simulate.")
        dp = dataclasses.replace(dp, enabled=False, noise_multiplier=None, target_epsilon=None)
    else:
        if positive("epsilon", _flag("epsilon")) is not None:
            # A new budget: sigma is recalibrated unless given explicitly.
            dp = dataclasses.replace(dp, target_epsilon=_flag("epsilon"), noise_multiplier=None)
        if positive("noise-multiplier", _flag("noise-multiplier")) is not None:
            dp = dataclasses.replace(dp, noise_multiplier=_flag("noise-multiplier"))
            if _flag("epsilon") is None:
                dp = dataclasses.replace(dp, target_epsilon=None)
        if _flag("delta") is not None:
            if not 0 < _flag("delta") < 1:
                raise UsageError(f"--delta must be in (0, 1), got {_flag('delta')}.")
            dp = dataclasses.replace(dp, delta=_flag("delta"))
            if _flag("noise-multiplier") is None and dp.target_epsilon is not None:
                dp = dataclasses.replace(dp, noise_multiplier=None)  # recalibrate for the new delta
        if positive("l2-clip", _flag("l2-clip")) is not None:
            dp = dataclasses.replace(dp, l2_clip=_flag("l2-clip"))
        if ("batch_size" in changes or "steps" in changes or "epochs" in changes) and _flag("noise-multiplier") is None and dp.target_epsilon is not None:
            # sigma was calibrated for the recipe's q and steps: recalibrate.
            dp = dataclasses.replace(dp, noise_multiplier=None)
    if positive("augmult", _flag("augmult")) is not None:
        aug = dataclasses.replace(aug, num_views=_flag("augmult"))
    if _flag("ema") is not None:
        if not 0 <= _flag("ema") < 1:
            raise UsageError(f"--ema must be in [0, 1) (0 turns EMA off), got {_flag('ema')}.")
        ema = dataclasses.replace(ema, decay=_flag("ema") or None)
    if positive("lr", _flag("lr")) is not None:
        optim = dataclasses.replace(optim, learning_rate=_flag("lr"))
    if _flag("dataset") is not None and _flag("dataset") != data.dataset:
        from dp_zoo.models._registry import unknown_name_message
        from dp_zoo.train.data import DATASETS

        if _flag("dataset") not in DATASETS:
            raise UsageError(unknown_name_message("dataset", _flag("dataset"), list(DATASETS)))
        if _flag("dataset") == "imagenet2012" and data.image_size is None:
            raise UsageError("--dataset imagenet2012 needs a fixed image size, which this recipe does not set; "
                             "use an ImageNet recipe (--recipe nf_resnet50_imagenet_eps8, or --model with an "
                             "NF architecture).")
        data = dataclasses.replace(data, dataset=_flag("dataset"))
        if not _flag("non-private") and _flag("noise-multiplier") is None and dp.target_epsilon is not None:
            # sigma was calibrated for the recipe's data set size N (q = B / N): recalibrate.
            dp = dataclasses.replace(dp, noise_multiplier=None)
    if _flag("data-dir"):
        data = dataclasses.replace(data, data_dir=_flag("data-dir"))
    if _flag("manual-dir"):
        data = dataclasses.replace(data, manual_dir=_flag("manual-dir"))
    if _flag("validation-size") is not None:
        if _flag("validation-size") < 0:
            raise UsageError("--validation-size must be >= 0.")
        if _flag("validation-size") != data.validation_size:
            data = dataclasses.replace(data, validation_size=_flag("validation-size"))
            if not _flag("non-private") and _flag("noise-multiplier") is None and dp.target_epsilon is not None:
                # The held-out examples shrink N, so q = B/N grows: recalibrate.
                dp = dataclasses.replace(dp, noise_multiplier=None)
    config = c.replace(dp=dp, augmult=aug, ema=ema, optim=optim, data=data, **changes)
    if config.physical_batch_size > config.batch_size:
        config = config.replace(physical_batch_size=config.batch_size)
    name = recipe.name
    if config.data.dataset != c.data.dataset:
        # The run (and what it publishes) is named after the data it trained on.
        old = c.data.dataset
        name = name.replace(old, config.data.dataset, 1) if old in name else f"{name}_{config.data.dataset}"
    if _flag("non-private"):
        name = "wrn_digits_nonprivate" if name.startswith("wrn_digits_eps") else f"{name}_nonprivate"
    if config.init_checkpoint:
        init_provenance(config)  # a non-private init of the same data is refused before any data loads
    return name, config, recipe


TIMM_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")
HAIKU_SUFFIXES = (".dill", ".pkl", ".pickle")


def init_format(path):
    """"keras", "zoo", "timm", "haiku" or None (unknown) for an ``--init`` value.

    ``.npz`` is read to tell timm from Haiku: DeepMind's ``F*_haiku.npz``
    NFNet weights are pickles despite the suffix, and ``np.savez`` archives
    of Haiku trees have ``module/param`` keys, where timm's have dots.
    """
    if not os.path.exists(path):
        return "zoo" if zoo_architecture(path) is not None else None
    if path.endswith(".keras"):
        return "keras"
    if path.endswith(HAIKU_SUFFIXES):
        return "haiku"
    if path.endswith(".npz"):
        import zipfile

        if not zipfile.is_zipfile(path):
            return "haiku"
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return "haiku" if any("/" in n[:-4] for n in names if n.endswith(".npy")) else "timm"
    if path.endswith(TIMM_SUFFIXES):
        return "timm"
    return None


def zoo_architecture(name):
    """The architecture of zoo entry ``name``, or None if there is no such entry."""
    from dp_zoo import zoo

    entry = zoo.entries().get(name)
    return entry["architecture"] if entry else None


def _from_scratch_hint(model):
    """The from-scratch recipes to suggest for an architecture whose default recipe fine-tunes."""
    family = "imagenet2012" if model.startswith("nf") else "cifar10"
    names = [n for n, r in sorted(recipes.RECIPES.items())
             if r.config.data.dataset == family and not recipes.requires_init(r) and n.endswith("eps8")]
    return ", ".join(f"--recipe {n}" for n in names) or "python -m dp_zoo.train --list-recipes"


def _haiku_family(model):
    if model.startswith("nfnet"):
        return "nfnet"
    if model.startswith("wrn") and "scalenorm" not in model:
        return "wrn"
    return None


def _nf_family(model):
    if model.startswith("nfnet"):
        return "nfnet"
    if model.startswith("nf_resnet"):
        return "nf_resnet"
    return None


# Runs in its own process: importing torch after TensorFlow can crash the
# process (CUDA builds), and the training process needs no torch at all.
_TORCH_TO_NPZ = """
import sys, numpy as np, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
for key in ("state_dict_ema", "state_dict", "model"):
    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
        sd = sd[key]
        break
np.savez(sys.argv[2], **{k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, "detach")})
"""


def read_timm_state_dict(path):
    """A timm checkpoint as ``{name: float32 numpy array}``.

    .npz and .safetensors are read here (no PyTorch needed); .pth/.pt/.bin
    are read by PyTorch (``weights_only=True``: tensors only, no pickled
    code) in a subprocess.
    """
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].astype(np.float32) for k in z.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: v.astype(np.float32) for k, v in load_file(path).items()}
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sd.npz")
        r = subprocess.run([sys.executable, "-c", _TORCH_TO_NPZ, path, out], capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise ValueError(f"--init {path}: PyTorch could not read it as a state dict ({last}). "
                             "Install torch, or convert it to .npz/.safetensors.")
        return read_timm_state_dict(out)


def load_init_weights(path, model, config, input_shape):
    """Fills ``model`` from ``--init`` (.keras, zoo name, Haiku or timm); returns the re-initialised layer names."""
    import keras

    import dp_zoo

    fmt = "zoo" if path.startswith("zoo:") else init_format(path)
    if fmt == "keras":
        import dp_zoo.models  # noqa: F401  custom layers for loading

        return transfer_weights(keras.models.load_model(path), model)
    if fmt == "zoo":
        # Verified against the zoo table's checksum before it is used.
        return transfer_weights(dp_zoo.load(path[len("zoo:"):]), model)
    if fmt == "haiku":
        from dp_zoo.models.convert import load_haiku_checkpoint, load_haiku_into

        return load_haiku_into(model, load_haiku_checkpoint(path), _haiku_family(config.model))
    from dp_zoo.models.convert import from_timm_state_dict

    sd = read_timm_state_dict(path)
    head = sd.get("head.fc.weight")
    if head is not None and head.shape[0] != model.output_shape[-1]:
        # Another class count (e.g. ImageNet-1k weights, CIFAR-10 run):
        # convert into a model with the checkpoint's head, then copy all
        # but the classifier.
        source = dp_zoo.create_model(config.model, num_classes=int(head.shape[0]), input_shape=input_shape,
                                     **dict(config.model_kwargs))
        from_timm_state_dict(source, sd)
        return transfer_weights(source, model)
    from_timm_state_dict(model, sd)
    return []


def transfer_weights(source, target):
    """Copies ``source``'s weights into ``target`` layer by layer (matched by name).

    Layers whose weight shapes differ keep their fresh initialisation, which
    is what fine-tuning to another number of classes needs; only the
    classifier may differ, any other mismatch is an error.

    Returns:
      names of the layers left at their initialisation.
    """
    src = {layer.name: layer for layer in source.layers}
    fresh = []
    for layer in target.layers:
        if not layer.weights:
            continue
        other = src.get(layer.name)
        if other is None:
            raise ValueError(
                f"--init model has no layer {layer.name!r}: it is not a {target.name} checkpoint. "
                "Pass weights of the same architecture."
            )
        shapes = [tuple(w.shape) for w in other.get_weights()]
        if shapes == [tuple(w.shape) for w in layer.get_weights()]:
            layer.set_weights(other.get_weights())
        elif layer is target.layers[-1]:
            fresh.append(layer.name)
        else:
            raise ValueError(
                f"--init layer {layer.name!r} has weight shapes {shapes}, the model needs "
                f"{[tuple(w.shape) for w in layer.get_weights()]}: not the same architecture."
            )
    return fresh


def _strategy():
    import tensorflow as tf

    n = _flag("logical-cpus")
    if n:
        if n < 1:
            raise UsageError("--logical-cpus must be >= 1.")
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)

    s = _flag("strategy")
    if s == "mirrored":
        if n:
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(n)])
        return tf.distribute.MirroredStrategy()
    if s == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if s == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=_flag("tpu") or None)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as e:  # TF raises several types here; all mean "no such TPU"
            where = f"TPU {_flag('tpu')!r}" if _flag("tpu") else "a TPU (none named by --tpu or the environment)"
            raise ValueError(f"--strategy tpu: cannot connect to {where}: {(str(e).splitlines() or [type(e).__name__])[0].rstrip('.')}. "
                             "Run on a TPU VM or pass --tpu NAME (or grpc://HOST:PORT).") from None
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def _is_chief(strategy):
    """True on the one process that writes the run directory and publishes.

    Single-process strategies: always. Multi-worker: the "chief" task, or
    worker 0 when TF_CONFIG names no chief (TensorFlow's convention).
    """
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def _worker_label(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None
    return f"{resolver.task_type} {resolver.task_id}"


def _all_workers_agree(strategy, value):
    """True iff every replica of ``strategy`` holds the same non-negative int ``value`` (< 2**62).

    One all-reduce: each replica checks that the SUM over replicas equals
    num_replicas * its own value, which holds on every replica only when all
    values are equal. Runs on every worker (it is a collective).
    """
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    if n == 1:
        return True
    value = int(value) & ((1 << 62) - 1)
    parts = tf.constant([value >> 31, value & 0x7FFFFFFF], tf.int64)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: parts), axis=None)
    return [int(x) for x in total.numpy()] == [n * (value >> 31), n * (value & 0x7FFFFFFF)]


def weights_sha256(model):
    """SHA-256 of the model's trainable weights (float32 bytes, in order)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for v in model.trainable_variables:
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


def init_provenance(config):
    """The ``init_privacy.InitProvenance`` of the run's ``--init`` (None from scratch); refuses a
    non-private one trained on the same data unless --allow-nonprivate-init."""
    prov = init_privacy.provenance(config.init_checkpoint, config.data.dataset)
    init_privacy.check_allowed(prov, allow_nonprivate=_flag("allow-nonprivate-init"))
    return prov


def _make_trainer(model, config, train_set, *, chief, **kwargs):
    """An ``engine.Trainer``; on a non-chief worker it reads ``run_dir`` but never writes it.

    Multi-worker runs share one run directory (a shared file system, as with
    TensorFlow's BackupAndRestore): every worker resumes from the chief's
    checkpoints and privacy journal, and only the chief writes them, so
    workers never race on the same files.
    """
    from dp_zoo.train import engine

    return engine.Trainer(model, config, train_set, write_run_dir=chief, **kwargs)


def train(name, config, recipe):
    """Runs the whole job; returns the run record."""
    import keras

    import dp_zoo
    from dp_zoo import tan
    from dp_zoo.train import data as data_lib
    from dp_zoo.train import engine

    # First: MultiWorkerMirroredStrategy and --logical-cpus must configure
    # TensorFlow before it runs any op (TFDS loading runs tf.data ops).
    strategy = _strategy()
    if config.deterministic:
        import tensorflow as tf

        # Bit-identical reruns (and crash replays that reuse a lost step's budget).
        tf.config.experimental.enable_op_determinism()
    chief = _is_chief(strategy)
    worker = _worker_label(strategy)
    train_set = data_lib.load_dataset(config.data, "train", streaming=_flag("streaming"))
    eval_split = "validation" if config.data.validation_size else "test"
    test_set = data_lib.load_dataset(config.data, eval_split, streaming=_flag("streaming"))
    streaming = getattr(train_set, "streaming", False)
    if streaming and _flag("streaming") is None:
        print(f"{train_set.name} train does not fit in memory: streaming it from its array_record files.")
    tan_info = None
    if _flag("tan-simulate") is not None:
        full = config
        if full.dp.noise_multiplier is None:
            steps = engine.resolve_steps(full, len(train_set))
            full = full.replace(steps=steps)
        tan_info = tan.tan_info(full, _flag("tan-simulate"), dataset_size=len(train_set))
        config = tan.simulate(full, _flag("tan-simulate"), dataset_size=len(train_set))
        name = f"{name}_tan{_flag('tan-simulate'):g}"
        print(f"TAN SIMULATION (factor {_flag('tan-simulate'):g}): NOT private at the full run's "
              f"epsilon={tan_info['epsilon_full_run']:.4f}; batch {config.batch_size}, "
              f"sigma {config.dp.noise_multiplier:.4f}, {config.steps} steps.")
    with strategy.scope():
        keras.utils.set_random_seed(config.seed)
        model = dp_zoo.create_model(
            config.model, num_classes=train_set.num_classes, input_shape=train_set.input_shape,
            **dict(config.model_kwargs),
        )
        if config.init_checkpoint:
            fresh = load_init_weights(config.init_checkpoint, model, config, train_set.input_shape)
            if fresh:
                print(f"Fine-tuning from {config.init_checkpoint}: re-initialised {', '.join(fresh)} "
                      "(shape differs, e.g. another number of classes).")
    run_dir = _flag("run-dir") or os.path.join("runs", name)
    prov = init_provenance(config)
    trainer = _make_trainer(
        model, config, train_set, chief=chief, eval_data=test_set if config.eval_every and chief else None,
        augment_fn=data_lib.make_augment_fn(config.augmult), run_dir=run_dir,
        strategy=strategy, progress=_flag("progress") and chief,
        prior_runs=prov.prior_runs if prov is not None else (),
    )
    trainer.tan_info = tan_info
    if strategy.num_replicas_in_sync > 1 and worker is not None:
        # Every worker must resume from the same step, or the collectives
        # pair different steps (a hang, or silently wrong updates).
        trainer.restore()
        if not _all_workers_agree(strategy, trainer.step):
            raise engine.TrainingError(
                f"{worker} would resume {run_dir} at step {trainer.step}, another worker at a different "
                "step: the workers do not see the same run directory. Put --run-dir on a file system "
                "shared by all workers (only the chief writes it)."
            )
    if trainer.private and config.deterministic:
        print("WARNING: --deterministic derives batch selection and noise from --seed, which is published: "
              "this run is NOT differentially private (its card says so).", file=sys.stderr)
    if recipe.published_accuracy is not None and config == recipe.config:
        print(f"Recipe {recipe.name}: {recipe.reference} reports {recipe.published_accuracy}% top-1.")
    if trainer.private:
        print(f"Training {config.model} on {train_set.name} (N={len(train_set)}) with DP-SGD: "
              f"sigma={trainer.noise_multiplier:.4f}, q={trainer.q:.4g}, {trainer.total_steps} steps, "
              f"C={config.dp.l2_clip}, delta={config.dp.delta:g}; run dir {run_dir}")
    else:
        print(f"Training {config.model} on {train_set.name} WITHOUT privacy (baseline); run dir {run_dir}")
    if streaming:
        # Read the steps' sampled examples ahead of the engine (same sampler).
        trainer.restore()
        train_set.prefetch(trainer.sampler, trainer.step, trainer.total_steps)
    try:
        record = trainer.fit()
    finally:
        if streaming:
            train_set.stop_prefetch()
    if trainer.stopped_by_signal:
        print("Stopped by SIGTERM; re-run the same command to resume.")
        return record
    record["weights_sha256"] = weights_sha256(model)
    if worker is not None and strategy.num_replicas_in_sync > 1:
        if not _all_workers_agree(strategy, int(record["weights_sha256"][:16], 16)):
            raise engine.TrainingError(
                f"{worker}: the workers finished with different weights (sha256 {record['weights_sha256']}); "
                "the run is not one DP-SGD run. Check that every worker ran the same command and version."
            )
    if not chief:
        # The chief evaluates, writes the run record and publishes.
        p = record["privacy"]
        eps = f"epsilon={p['epsilon']:.4f}" if p["private"] else "NOT private"
        print(f"{worker}: finished {record['steps_completed']} steps, {eps}, weights sha256 "
              f"{record['weights_sha256']} (same on all workers); the chief writes {run_dir}.")
        return record
    metrics = {"test_accuracy_last": trainer.evaluate(test_set, "last")["accuracy"],
               "test_accuracy_ema": None, "test_accuracy_polyak": None, "evaluated_on": eval_split}
    if trainer.ema_vars is not None:
        metrics["test_accuracy_ema"] = trainer.evaluate(test_set, "ema")["accuracy"]
    if trainer.polyak_vars is not None:
        metrics["test_accuracy_polyak"] = trainer.evaluate(test_set, "polyak")["accuracy"]
    record["metrics"] = metrics
    record["data"] = {
        "dataset": train_set.name, "train_split": train_set.split, "test_split": test_set.split,
        "train_size": len(train_set), "test_size": len(test_set),
        "mean": list(train_set.mean), "std": list(train_set.std),
        "public_pretraining_data": prov.detail if prov is not None and prov.kind in (
            init_privacy.PUBLIC_PRETRAINING, init_privacy.DECLARED_PUBLIC) else None,
        "streaming": bool(streaming),
    }
    record["model"]["init"] = prov.to_dict() if prov is not None else None
    if prov is not None and prov.kind == init_privacy.NONPRIVATE_SAME_DATA and record["privacy"]["private"]:
        engine.mark_not_private(record["privacy"], "non-private initial checkpoint",
                                init_privacy.not_private_detail(prov))
    record["entry_name"] = name
    record["published_weights"] = "ema" if trainer.ema_vars is not None else "last"
    with open(os.path.join(run_dir, "run_record.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    p = record["privacy"]
    acc = metrics["test_accuracy_ema"] if metrics["test_accuracy_ema"] is not None else metrics["test_accuracy_last"]
    if worker is not None:
        print(f"{worker} (chief): weights sha256 {record['weights_sha256']}")
    print(f"\n{eval_split} accuracy: {acc:.4f} ({record['published_weights']} weights; "
          f"last weights {metrics['test_accuracy_last']:.4f})")
    if p.get("not_private"):
        nominal = p.get("nominal_epsilon") or {}
        print(f"privacy: NOT differentially private ({p['not_private']['reason']}): {p['not_private']['detail']}; "
              f"nominal epsilon had it been private: PLD {nominal.get('pld')}, RDP {nominal.get('rdp')}")
    elif p["private"]:
        pld = "n/a" if p["epsilon_pld"] is None else f"{p['epsilon_pld']:.4f}"
        print(f"privacy: epsilon={p['epsilon']:.4f} (PLD {pld}, RDP {p['epsilon_rdp']:.4f}), "
              f"delta={p['delta']:g}, {p['steps']} steps, sigma={p['noise_multiplier']:.4f}, q={p['sampling_probability']:.4g}, "
              "Poisson sampling, add-or-remove-one")
        if p.get("tan_simulation"):
            print("TAN SIMULATION: this model is NOT private at the full run's epsilon "
                  f"({p['tan_simulation']['epsilon_full_run']:.4f}).")
    else:
        print("privacy: none (non-private baseline)")
    if _flag("publish"):
        from dp_zoo import export

        publish_dir = _flag("publish-dir")
        overwrite = _flag("overwrite")
        if publish_dir is None:
            base = os.environ.get("DP_ZOO_HOME")
            if base is None:
                from dp_zoo.zoo import cache_dir

                base = str(cache_dir())
            publish_dir = os.path.join(base, name)
            overwrite = True  # the user's own cache / home
        export.export_model(trainer.model_for(record["published_weights"]), record, publish_dir,
                            entry_name=name, overwrite=overwrite)
        print(f"published: {publish_dir}  (load with dp_zoo.load({publish_dir!r}))")
    return record


def _parse(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"dp_zoo.train: error: {e}\nRun with --helpfull for all flags.", file=sys.stderr)
        sys.exit(2)


def main(argv):
    from absl import logging

    # dp-accounting logs every excluded RDP order at WARNING through absl;
    # the user needs the epsilon, not that noise.
    logging.set_verbosity(logging.ERROR)
    if len(argv) > 1:
        print(f"dp_zoo.train: error: unexpected arguments {argv[1:]}; flags start with --.", file=sys.stderr)
        return 2
    if _flag("list-recipes"):
        for n, r in sorted(recipes.RECIPES.items()):
            pub = f"published {r.published_accuracy}%" if r.published_accuracy else ""
            extra = " (needs --init)" if recipes.requires_init(r) else ""
            print(f"{n:40s} {r.config.model:18s} {r.config.data.dataset:13s} {pub}{extra}")
        return 0
    try:
        name, config, recipe = resolve()
    except (UsageError, ValueError) as e:
        print(f"dp_zoo.train: error: {e}", file=sys.stderr)
        return 2
    from dp_zoo.train.data import DataUnavailableError
    from dp_zoo.accounting import BudgetExceededError
    from dp_zoo.train.engine import TrainingError

    try:
        t0 = time.time()
        train(name, config, recipe)
        print(f"done in {time.time() - t0:.1f} s")
    except (DataUnavailableError, TrainingError, BudgetExceededError, FileExistsError, ValueError) as e:
        print(f"dp_zoo.train: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    return 0


def run():
    """Console-script entry point (``dp-zoo-train``)."""
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse)


if __name__ == "__main__":
    run()
