"""Frozen configuration dataclasses for a private training run.

A run is fully described by a ``TrainConfig``; recipes (``recipes.py``) are
named ``TrainConfig`` values and the CLI only overrides their fields. Every
config round-trips through ``to_dict``/``from_dict`` so that checkpoints and
model cards record exactly what ran.

The DP semantics these fields control are in docs/design.md and docs/privacy.md.
"""

import dataclasses
from typing import Optional, Tuple

from dp_zoo.precision import check_precision


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """Differential-privacy parameters.

    Attributes:
      l2_clip: per-example clipping norm C.
      noise_multiplier: sigma; the noise std is sigma * C. If None, it is
        calibrated from ``target_epsilon`` by the accountant.
      target_epsilon: the budget; training refuses a step that would exceed
        it. If None, the run is bounded by its step count and the epsilon the
        accountant computes for it is reported.
      delta: the delta of the (epsilon, delta) guarantee.
      accountant: "pld" (tighter) or "rdp" (what the paper reported).
      sampling: "poisson" (the engine's default and what the accountant
        assumes).
      enabled: False only for non-private baselines; then no clipping, no
        noise and no epsilon is ever claimed.
      clipping: "flat" (each gradient to norm C), "automatic" (scaled by
        1 / (norm + clipping_gamma); sensitivity 1), "per_layer" (each
        layer's part to C / sqrt(L), or by ``layer_clips``) or "adaptive"
        (flat at a C_t that starts at C and follows ``target_quantile`` of
        the norms); see ``dp_zoo.dp.clipping_modes``.
      clipping_gamma: automatic clipping's gamma.
      layer_clips: per-layer clipping's ``((regex, C_l), ...)``; empty: C
        split equally over the trained layers.
      target_quantile, clip_learning_rate, count_noise: adaptive clipping's
        quantile gamma, geometric learning rate eta and count noise std
        sigma_b (None: B / 20); ``dp_zoo.dp.adaptive_clip``.
    """

    l2_clip: float = 1.0
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    delta: float = 1e-5
    accountant: str = "pld"
    sampling: str = "poisson"
    enabled: bool = True
    clipping: str = "flat"
    clipping_gamma: float = 0.01
    layer_clips: Tuple[Tuple[str, float], ...] = ()
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise: Optional[float] = None

    def __post_init__(self):
        # JSON gives lists back: as tuples, a config read from a record equals the one that ran.
        object.__setattr__(self, "layer_clips", tuple((str(r), float(c)) for r, c in self.layer_clips))


@dataclasses.dataclass(frozen=True)
class AugmultConfig:
    """Augmentation multiplicity: K augmented views averaged per example.

    Attributes:
      num_views: K (1 = no multiplicity).
      style: "cifar" (reflect-pad + random crop + flip), "imagenet"
        (random resized-crop-like crop + flip), "crop" (pad + crop, no flip:
        for digits, where a flip changes the class) or "none".
      pad: padding in pixels for the "cifar"/"crop" styles.
      augment_first_view: if False, view 0 is the un-augmented image.
    """

    num_views: int = 1
    style: str = "cifar"
    pad: int = 4
    augment_first_view: bool = True


@dataclasses.dataclass(frozen=True)
class EMAConfig:
    """Parameter averaging for evaluation.

    Attributes:
      decay: EMA decay mu (warm-up mu_t = min(mu, (1+t)/(10+t))); None = off.
      polyak_start: step from which a uniform (Polyak) average is kept;
        None = off.
    """

    decay: Optional[float] = 0.999
    polyak_start: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer applied to the noisy, averaged gradient.

    Attributes:
      name: "sgd" or "adam".
      learning_rate: peak learning rate.
      momentum: SGD momentum (0 = plain SGD, as in the paper).
      nesterov: Nesterov momentum for SGD.
      weight_decay: decoupled weight decay applied with the noisy update.
      schedule: "constant", "cosine" or "linear_warmup_cosine".
      warmup_steps: linear warm-up length for the warm-up schedules.
    """

    name: str = "sgd"
    learning_rate: float = 2.0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives, and how it is split.

    Attributes:
      dataset: "digits" (embedded, scikit-learn), or a TFDS name: "cifar10",
        "cifar100", "svhn_cropped", "mnist", "fashion_mnist",
        "imagenet2012".
      data_dir: TFDS data directory (None = TFDS default).
      manual_dir: TFDS manual download directory (ImageNet).
      image_size: resize images to (image_size, image_size); None = native.
      validation_size: examples held out of the training split for
        hyper-parameter search (0 = train on the whole training split).
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    image_size: Optional[int] = None
    validation_size: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run.

    Attributes:
      model: architecture name (see ``dp_zoo.list_architectures()``).
      model_kwargs: extra architecture arguments (tuple of (key, value)
        pairs, to stay hashable).
      batch_size: the expected logical batch size B = q * N.
      physical_batch_size: rows per micro-batch (memory bound); the logical
        batch is accumulated over micro-batches.
      steps: number of noisy updates (None: derived from ``epochs``).
      epochs: alternative to ``steps``: steps = ceil(epochs * N / B).
      seed: seeds initialisation and augmentation (public: it is on the
        card). Batch selection and noise never use it, except in a
        ``deterministic`` run.
      deterministic: a reproducible run (tests, experiments): batch
        selection and noise are derived from ``seed`` instead of a secret,
        so anyone can recompute them and the run is published as NOT
        differentially private (docs/privacy.md).
      eval_every: evaluate every this many steps (0 = only at the end).
      checkpoint_every: checkpoint every this many steps.
      init_checkpoint: weights to fine-tune from (a ``.keras`` file or a
        converted checkpoint); None trains from scratch.
      tan_simulation_factor: if set, this is a TAN simulation of a run with
        batch and sigma this many times larger (see ``dp_zoo.engine.tan``).
      trainable: which variables train: "all", "head" (the classifier) or a
        regular expression searched in each variable's path
        (``dp_zoo.engine.trainable``); the others stay frozen, and clipping
        and noise cover the trained ones only.
      linear_probe: train the classifier on the frozen backbone's features,
        computed once and cached in the run directory (requires
        ``trainable="head"``; ``dp_zoo.engine.linear_probe``).
      precision: "float32" or "bf16" (Keras' ``mixed_bfloat16`` for the DP
        step's forward and backward passes; per-example norms, clipping,
        sums, noise, the optimizer and the averages stay float32:
        ``dp_zoo.precision``). Records written before it existed ran float32.
    """

    model: str = "wrn_digits"
    model_kwargs: tuple = ()
    batch_size: int = 256
    physical_batch_size: int = 64
    steps: Optional[int] = None
    epochs: Optional[float] = None
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 0
    checkpoint_every: int = 50
    init_checkpoint: Optional[str] = None
    tan_simulation_factor: Optional[float] = None
    trainable: str = "all"
    linear_probe: bool = False
    precision: str = "float32"
    dp: DPConfig = DPConfig()
    augmult: AugmultConfig = AugmultConfig()
    ema: EMAConfig = EMAConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()

    def __post_init__(self):
        check_precision(self.precision)

    def replace(self, **changes):
        """Returns a copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """A JSON-serialisable dict of every field (nested configs as dicts)."""
        d = dataclasses.asdict(self)
        d["model_kwargs"] = [list(kv) for kv in self.model_kwargs]
        d["dp"]["layer_clips"] = [list(rc) for rc in self.dp.layer_clips]  # as JSON reads it back
        return d

    @classmethod
    def from_dict(cls, d):
        """Inverse of ``to_dict``; unknown keys are an error.

        Keys that older versions wrote and that no longer configure anything
        (``num_classes``: the classes always come from the data set) are
        accepted and dropped, so their run records and checkpoints still read.
        """
        d = dict(d)
        d.pop("num_classes", None)
        if "deterministic_noise" in d:
            # Records written before the reproducible mode seeded sampling too:
            # a seeded-noise run was never private, so it maps to deterministic.
            d["deterministic"] = bool(d.pop("deterministic_noise")) or bool(d.get("deterministic"))
        nested = {
            "dp": DPConfig,
            "augmult": AugmultConfig,
            "ema": EMAConfig,
            "optim": OptimConfig,
            "data": DataConfig,
        }
        for key, sub in nested.items():
            if key in d and isinstance(d[key], dict):
                d[key] = sub(**d[key])
        if "model_kwargs" in d:
            d["model_kwargs"] = tuple(tuple(kv) for kv in d["model_kwargs"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"Unknown TrainConfig fields {sorted(unknown)}; known: {sorted(names)}."
            )
        return cls(**d)
