"""The one place where a run's privacy parameters are decided: steps, sigma and C.

``resolve_privacy`` turns what a user asked for (a sigma, or a target epsilon
to calibrate sigma for; steps or epochs; the clipping norm C) into a
``PrivacyPlan``. Every path calls it: the ``Trainer`` (and through it the
training command, the tuner and the audit) via ``resolve_config``, the TAN
simulation (``dp_zoo.engine.tan``) and ``make_private``. Nothing else
calibrates sigma from a target epsilon or divides epochs into steps; the
tuner's per-grid-point sigma comes from its own joint accountant
(``dp_zoo.accounting.tuning_calibration``) and reaches the trainer as an
explicit sigma, which this module then takes as given.
"""

import dataclasses
import math
from typing import Optional

from dp_zoo import accounting, cli
from dp_zoo.dp import adaptive_clip
from dp_zoo.dp.clipping_modes import Clipping


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """What a run's DP-SGD is resolved to (docs/design.md, "DP-SGD semantics").

    Attributes:
      private: clipping and noise on (False: a non-private baseline).
      dataset_size: N.
      batch_size: the expected logical batch B; q = B / N.
      steps: the number of logical steps (None only for ``make_private``
        given sigma, whose ``fit`` calls decide their steps).
      noise_multiplier: sigma the accountant charges for (None when not private).
      update_noise_multiplier: sigma the update draws: ``noise_multiplier``
        (adaptive clipping: the gradient's share of it, Andrew et al.'s
        Theorem 1, ``dp_zoo.dp.adaptive_clip``), or 0.0 for the audit's
        noiseless power check (``add_noise=False``).
      update_count_noise: adaptive clipping: the count noise std sigma_b the
        update draws (0.0 for the other rules and the noiseless check).
      l2_clip: C as configured (None when not private).
      clipping: the ``dp_zoo.dp.Clipping`` rule, whose ``sensitivity`` the
        noise is scaled by (None when not private).
      delta, accountant, target_epsilon: of the guarantee.
    """

    private: bool
    dataset_size: int
    batch_size: float
    steps: Optional[int]
    noise_multiplier: Optional[float]
    update_noise_multiplier: Optional[float]
    l2_clip: Optional[float]
    delta: float
    accountant: str
    target_epsilon: Optional[float]
    clipping: Optional[Clipping] = None
    update_count_noise: float = 0.0

    @property
    def sampling_probability(self):
        """q = B / N."""
        return self.batch_size / self.dataset_size


def steps_for(*, steps, epochs, dataset_size, batch_size):
    """Number of logical steps: ``steps``, or ``ceil(epochs * N / B)``."""
    if steps is None and epochs is None:
        raise ValueError("Set steps or epochs (e.g. --steps 500).")
    if steps is None:
        steps = math.ceil(epochs * dataset_size / batch_size)
    if steps < 1:
        raise ValueError(f"The run needs at least one step, got {steps}.")
    return int(steps)


def _calibrated_sigma(target_epsilon, sampling_probability, steps, delta, accountant, prior_runs):
    with cli.announce_after(2.0, f"Calibrating the noise multiplier sigma for epsilon={target_epsilon:g} over "
                                 f"{steps} steps ({accountant.upper()} accountant; this can take a minute)..."):
        return float(accounting.calibrate_noise(
            target_epsilon=target_epsilon, sampling_probability=sampling_probability, steps=steps,
            delta=delta, accountant=accountant, prior_runs=prior_runs))


def resolve_privacy(*, dataset_size, batch_size, private=True, steps=None, epochs=None, noise_multiplier=None,
                    target_epsilon=None, delta=1e-5, accountant="pld", l2_clip=None, prior_runs=(),
                    add_noise=True, steps_required=True, clipping="flat", clipping_gamma=0.01, layer_clips=(),
                    target_quantile=0.5, clip_learning_rate=0.2, count_noise=None):
    """The ``PrivacyPlan`` of a run: steps from steps/epochs, sigma given or calibrated, C checked.

    Args:
      dataset_size, batch_size: N and the expected batch B.
      private: False resolves a non-private baseline (no sigma, no C).
      steps, epochs: the run's length (``steps`` wins).
      noise_multiplier: sigma; when None it is calibrated for ``target_epsilon``
        over the run's steps (with a target too, the target is a budget guard).
      delta, accountant: of the guarantee.
      l2_clip: C (> 0 for a private run).
      clipping, clipping_gamma, layer_clips: the clipping rule
        (``dp_zoo.dp.Clipping``: "flat", "automatic", "per_layer" or "adaptive").
      target_quantile, clip_learning_rate, count_noise: adaptive clipping's
        gamma, eta and sigma_b (None: B / 20); sigma is then what the
        accountant charges for the pair of queries, and the gradient draws
        ``adaptive_clip.gradient_noise_multiplier(sigma, sigma_b)``.
      prior_runs: ``((sigma, q, steps), ...)`` composed before this run: a
        calibration targets the total epsilon.
      add_noise: False keeps sigma for the accounting but draws none (the
        audit's power check; the record marks such a run not private).
      steps_required: False lets a run with an explicit sigma leave its
        length open (``make_private``, whose ``fit`` calls set it).

    Raises:
      ValueError: naming the missing or invalid setting and the fix.
    """
    if not 0 < batch_size <= dataset_size:
        raise ValueError(f"batch_size must be in [1, {dataset_size}] (the training set size), got {batch_size}.")
    length_known = steps is not None or epochs is not None
    run_steps = steps_for(steps=steps, epochs=epochs, dataset_size=dataset_size, batch_size=batch_size) \
        if length_known or steps_required else None
    if not private:
        return PrivacyPlan(False, int(dataset_size), float(batch_size), run_steps, None, None, None,
                           float(delta), accountant, None)
    if l2_clip is None or not l2_clip > 0:
        raise ValueError(f"l2_clip must be > 0 (the clipping norm C), got {l2_clip}.")
    if clipping == "adaptive" and count_noise is None:
        count_noise = adaptive_clip.default_count_noise(batch_size)
    rule = Clipping(clipping, float(l2_clip), float(clipping_gamma), tuple(layer_clips), float(target_quantile),
                    float(clip_learning_rate), None if count_noise is None else float(count_noise))
    sigma = noise_multiplier
    if sigma is None:
        if target_epsilon is None:
            raise ValueError("A private run needs noise_multiplier or target_epsilon (e.g. target_epsilon=8.0 "
                             "or the flag --epsilon 8); for a non-private baseline disable DP explicitly.")
        if run_steps is None:
            raise ValueError("To calibrate sigma for target_epsilon, give the planned epochs= or steps=.")
        sigma = _calibrated_sigma(target_epsilon, batch_size / dataset_size, run_steps, delta, accountant,
                                  tuple(prior_runs))
    if not sigma >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {sigma}.")
    drawn, count_drawn = float(sigma), 0.0
    if rule.adaptive:
        drawn, count_drawn = adaptive_clip.gradient_noise_multiplier(sigma, rule.count_noise), rule.count_noise
    return PrivacyPlan(True, int(dataset_size), float(batch_size), run_steps, float(sigma),
                       drawn if add_noise else 0.0, float(l2_clip), float(delta), accountant,
                       None if target_epsilon is None else float(target_epsilon), rule,
                       count_drawn if add_noise else 0.0)


def resolve_config(config, dataset_size, prior_runs=(), *, add_noise=True):
    """``resolve_privacy`` for a ``TrainConfig`` (the Trainer's and TAN's entry point)."""
    dp = config.dp
    return resolve_privacy(
        dataset_size=dataset_size, batch_size=config.batch_size, private=bool(dp.enabled), steps=config.steps,
        epochs=config.epochs, noise_multiplier=dp.noise_multiplier, target_epsilon=dp.target_epsilon,
        delta=dp.delta, accountant=dp.accountant, l2_clip=dp.l2_clip,
        prior_runs=tuple(prior_runs) if dp.enabled else (), add_noise=add_noise,
        clipping=dp.clipping, clipping_gamma=dp.clipping_gamma, layer_clips=dp.layer_clips,
        target_quantile=dp.target_quantile, clip_learning_rate=dp.clip_learning_rate, count_noise=dp.count_noise)


def validate(config, train):
    """Clear errors for a configuration that cannot run on ``train`` (its privacy settings: ``resolve_privacy``)."""
    n = len(train)
    if n < 1:
        raise ValueError("The training set is empty.")
    if not 0 < config.batch_size <= n:
        raise ValueError(
            f"batch_size={config.batch_size} must be in [1, {n}] (the training set size)."
        )
    if config.physical_batch_size < 1:
        raise ValueError(f"physical_batch_size must be >= 1, got {config.physical_batch_size}.")
    if config.augmult.num_views < 1:
        raise ValueError(f"augmult must be >= 1, got {config.augmult.num_views}.")
    if config.ema.decay is not None and not 0 <= config.ema.decay < 1:
        raise ValueError(f"EMA decay must be in [0, 1), got {config.ema.decay}.")
    if config.linear_probe and config.trainable != "head":
        raise ValueError(f"linear probing trains the classifier only: trainable must be 'head', got "
                         f"{config.trainable!r}.")
    if config.optim.learning_rate <= 0:
        raise ValueError(f"learning rate must be > 0, got {config.optim.learning_rate}.")
