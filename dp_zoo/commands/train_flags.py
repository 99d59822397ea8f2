"""The flags of ``python -m dp_zoo.train``: their parser, checks, and the table of one-field overrides.

``OVERRIDES`` lists the flags that set one ``TrainConfig`` field when given
(``guarantee``: the flag changes delta, q = B / N or the steps, so the
recipe's sigma no longer applies); ``in_flag_terms`` rewrites a library error
in the command line's words. ``commands/train.py`` turns the parsed flags into
a run.
"""

import re
from typing import Callable, NamedTuple, Optional

from dp_zoo import cli


class UsageError(ValueError):
    """A bad flag combination (printed as one line, exit code 2)."""


def positive(flag, v):
    """``v`` if it is > 0 (``--flag``'s check)."""
    if not v > 0:
        raise UsageError(f"--{flag} must be > 0, got {v}.")
    return v


def _at_least(n):
    def check(flag, v):
        if v < n:
            raise UsageError(f"--{flag} must be >= {n}.")
        return v
    return check


def _delta(flag, v):
    if not 0 < v < 1:
        raise UsageError(f"--delta must be in (0, 1), got {v}.")
    return v


def _ema_decay(flag, v):
    if not 0 <= v < 1:
        raise UsageError(f"--ema must be in [0, 1) (0 turns EMA off), got {v}.")
    return v or None


def _precision(flag, v):
    from dp_zoo.precision import PRECISIONS

    if v not in PRECISIONS:
        raise UsageError(f"--precision {v!r} is not supported: use {' or '.join(PRECISIONS)} (bf16 = Keras' "
                         "mixed_bfloat16: bfloat16 compute, float32 weights, norms, clipping and noise).")
    return v


def _clipping_mode(flag, v):
    from dp_zoo.dp.clipping_modes import MODES

    if v not in MODES:
        raise UsageError(f"--clipping {v!r} is not a clipping rule: use {', '.join(MODES)} (automatic: scaled by "
                         "1 / (norm + gamma), sensitivity 1; per_layer: each layer to C / sqrt(L); adaptive: C "
                         "follows a quantile of the norms).")
    return v


def _quantile(flag, v):
    if not 0 < v < 1:
        raise UsageError(f"--{flag} must be in (0, 1) (e.g. 0.5, the median norm), got {v}.")
    return v


def layer_clips(flag, v):
    """``--layer-clips 'REGEX=C;REGEX=C'`` as ``((regex, C), ...)``."""
    pairs = []
    for item in (x.strip() for x in v.split(";")):
        pattern, eq, clip = item.rpartition("=")
        try:
            c = float(clip)
        except ValueError:
            c = None
        if not item or not eq or not pattern or c is None or not c > 0:
            raise UsageError(f"--{flag} {v!r}: write REGEX=C pairs separated by ';' with every C > 0, e.g. "
                             "'stage1|stem=0.5;.*=1.0' (a variable takes the first pattern its path matches).")
        pairs.append((pattern, c))
    return tuple(pairs)


CLIPPING_HELP = ("flat (default: each example's gradient to norm C), automatic (Bu et al. 2023: scaled by "
                 "1 / (norm + gamma), sensitivity 1, the learning rate absorbs C), per_layer (each layer's part "
                 "to C / sqrt(L), or by --layer-clips) or adaptive (Andrew et al. 2021: flat at a C_t that starts "
                 "at --l2-clip and follows the --target-quantile of the norms through a noisy count); the noise "
                 "is sigma times the rule's sensitivity")


class _Override(NamedTuple):
    """A flag that sets one ``TrainConfig`` field when given."""

    flag: str
    field: str  # dotted for a nested config: "dp.l2_clip"
    type: type
    help: str
    check: Optional[Callable] = None  # (flag, value) -> the value to set; raises UsageError
    guarantee: bool = False  # part of (delta, q, steps): the recipe's sigma no longer applies
    dp_only: bool = False  # a DP parameter, ignored by --non-private


OVERRIDES = (
    _Override("batch-size", "batch_size", int, "Expected logical batch size B (q = B / N).", positive, True),
    _Override("physical-batch-size", "physical_batch_size", int,
              "Micro-batch size (memory); the logical batch is accumulated.", positive),
    _Override("steps", "steps", int, "Number of noisy steps.", positive, True),
    _Override("epochs", "epochs", float, "Alternative to --steps: epochs of expected batches.", positive, True),
    _Override("seed", "seed", int, "Seed for sampling, augmentation and initialisation."),
    _Override("eval-every", "eval_every", int, "Evaluate every N steps (0: only at the end).", _at_least(0)),
    _Override("checkpoint-every", "checkpoint_every", int, "Checkpoint every N steps.", _at_least(1)),
    _Override("deterministic", "deterministic", bool,
              "A reproducible run (tests, experiments): batch selection and noise are derived from --seed and "
              "TensorFlow's op determinism is on. Published as NOT differentially private: anyone who reads "
              "the seed can recompute the batches and subtract the noise."),
    _Override("delta", "dp.delta", float, "Delta of the guarantee.", _delta, True, True),
    _Override("l2-clip", "dp.l2_clip", float, "Per-example clipping norm C.", positive, False, True),
    _Override("clipping", "dp.clipping", str, CLIPPING_HELP + ".", _clipping_mode, False, True),
    _Override("clipping-gamma", "dp.clipping_gamma", float, "Automatic clipping's gamma (default 0.01).",
              positive, False, True),
    _Override("layer-clips", "dp.layer_clips", str, "Per-layer clipping norms: 'REGEX=C;REGEX=C' (first match "
              "of each variable's path; every trained variable must match one).", layer_clips, False, True),
    _Override("target-quantile", "dp.target_quantile", float, "Adaptive clipping: the quantile of the "
              "per-example norms that C follows (default 0.5).", _quantile, False, True),
    _Override("clip-lr", "dp.clip_learning_rate", float, "Adaptive clipping: the geometric learning rate of C "
              "(default 0.2).", positive, False, True),
    _Override("clip-count-noise", "dp.count_noise", float, "Adaptive clipping: the noise std of the unclipped "
              "count (default B / 20; it must exceed sigma / 2).", positive, False, True),
    _Override("augmult", "augmult.num_views", int, "Augmentation multiplicity K.", positive),
    _Override("ema", "ema.decay", float, "EMA decay (0 turns EMA off).", _ema_decay),
    _Override("lr", "optim.learning_rate", float, "Learning rate.", positive),
    _Override("precision", "precision", str,
              "float32 (default) or bf16: the DP step's forward/backward passes in Keras' mixed_bfloat16; "
              "weights, per-example norms, clipping, noise and the optimizer stay float32.", _precision),
    _Override("data-dir", "data.data_dir", str, "TFDS data directory."),
    _Override("manual-dir", "data.manual_dir", str, "TFDS manual download directory (ImageNet)."),
)


# The clipping rule's flags: the training command's and the tuner's.
CLIPPING_OVERRIDES = tuple(o for o in OVERRIDES if o.flag in (
    "clipping", "clipping-gamma", "layer-clips", "target-quantile", "clip-lr", "clip-count-noise"))


# Python names that library errors use (TrainConfig fields, accounting arguments) -> the flag that sets them.
_FLAG_OF = {**{o.field.split(".")[-1]: f"--{o.flag}" for o in OVERRIDES},
            "noise_multiplier": "--noise-multiplier", "target_epsilon": "--epsilon"}
_PYTHON_NAME = re.compile(r"\b(" + "|".join(sorted((k for k in _FLAG_OF if "_" in k), key=len, reverse=True))
                          + r")\b(=?)")


def in_flag_terms(message):
    """A library error in the command line's words: ``batch_size=100000`` -> ``--batch-size 100000``."""
    message = re.sub(r"calibrate_noise\([^)]*\)", "--epsilon (sigma is then calibrated)", message)
    return _PYTHON_NAME.sub(lambda m: _FLAG_OF[m.group(1)] + (" " if m.group(2) else ""), message)


def parser():
    """The parser of ``python -m dp_zoo.train`` (every flag, one style: ``dp_zoo.cli``)."""
    p = cli.Parser("dp_zoo.train", description="Private training (DP-SGD), fine-tuning and publishing.")
    p.option("recipe", help="Named recipe to reproduce (see --list-recipes).")
    p.option("model", help="Architecture (see dp_zoo.list_architectures()): with --recipe, replaces the recipe's; "
             "alone, uses the architecture's default recipe. The run is named after it.")
    p.switch("list-recipes", default=False, help="List recipes and exit.")
    p.option("epsilon", type=float, help="Target epsilon; sigma is calibrated for it unless --noise-multiplier "
             "is given.")
    p.option("noise-multiplier", type=float, help="sigma; if set with --epsilon, the epsilon is a budget guard.")
    for o in OVERRIDES:
        if o.type is bool:
            p.switch(o.flag, default=None, help=o.help)
        else:
            p.option(o.flag, type=o.type, help=o.help)
    p.switch("non-private", default=False, help="Train a non-private baseline (no clipping, no noise, no epsilon).")
    p.option("tan-simulate", type=float, help="Run the TAN simulation with batch and sigma divided by this factor.")
    p.option("init", help="Weights to fine-tune from: a .keras model of the same architecture, a zoo model name, "
             "an exported artifact directory (verified, with its card), a DeepMind NFNet / jax_privacy WRN Haiku "
             "checkpoint, or a timm state dict of an NF model (.pth/.pt/.bin/.safetensors, or .npz of numpy "
             "arrays); a classifier of another class count is re-initialised.")
    p.option("trainable", help="Which variables train: 'all' (default), 'head' (the classifier) or a regex "
             "searched in each variable's path (e.g. 'stage4|logits'); the rest stay frozen, and per-example "
             "clipping and noise cover the trained variables only.")
    p.switch("linear-probe", default=None, help="Linear probing: compute the frozen backbone's features once "
             "(K augmented views per training example; cached in the run directory), then train the classifier "
             "on them with DP-SGD (same sampling and accounting). Implies --trainable head; publishes the full "
             "network.")
    p.switch("allow-nonprivate-init", default=False, help="Allow an --init checkpoint trained on the same data set "
             "without privacy; the result is then published as NOT differentially private (docs/privacy.md).")
    p.option("dataset", help="Train on this data set instead of the recipe's (digits, cifar10, cifar100, "
             "svhn_cropped, mnist, fashion_mnist, imagenet2012); sigma is recalibrated for its size.")
    p.option("validation-size", type=int, help="Hold out this many training examples as the evaluation split.")
    p.switch("streaming", default=None, help="Stream the data set from its TFDS array_record files instead of "
             "loading it into memory (default: only when it would not fit). Prepare it with "
             "`tfds build NAME --file_format=array_record`.")
    p.option("run-dir", "workdir", help="Run directory (checkpoints; resumes if it exists). Default runs/<name>. "
             "Also --workdir.")
    p.option("publish-dir", help="Where to publish the model and card. Default: a new "
             "$DP_ZOO_HOME/runs/<name>-<date>-<time> (else ~/.cache/dp_zoo/runs/...); load it with dp_zoo.load(PATH).")
    p.switch("publish", default=True, help="Publish the trained model with its card.")
    p.switch("overwrite", default=False, help="Replace an existing artifact in --publish-dir (only a dp_zoo "
             "artifact: never a directory holding files its MANIFEST does not list).")
    p.option("strategy", default="default", choices=["default", "mirrored", "multiworker", "tpu"],
             help="tf.distribute strategy.")
    p.option("tpu", help="With --strategy tpu: the TPU's name or grpc:// address (default: the one the "
             "environment names, e.g. on a TPU VM).")
    p.option("logical-cpus", type=int, help="Split the CPU into N logical devices (try multi-replica runs on "
             "a CPU).")
    p.switch("progress", default=True, help="Show a progress bar.")
    p.switch("deterministic-noise", default=None, help="Removed: use --deterministic (see docs/privacy.md).")
    return p
