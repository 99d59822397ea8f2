"""What a ``TrainConfig`` resolves to before training: its step count, its sigma, and its checks.

Used by the ``Trainer`` and by the training command (``jobs/training.py``), which
needs the step count before a trainer exists.
"""

import math

from dp_zoo import accounting, cli


def resolve_steps(config, dataset_size):
    """Number of logical steps: ``steps`` or ``ceil(epochs * N / B)``."""
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        steps = math.ceil(config.epochs * dataset_size / config.batch_size)
    else:
        raise ValueError("Set steps or epochs in the TrainConfig (e.g. --steps 500).")
    if steps < 1:
        raise ValueError(f"The run needs at least one step, got {steps}.")
    return int(steps)


def resolve_noise_multiplier(config, dataset_size, steps, prior_runs=()):
    """sigma from the config, or calibrated from its target epsilon (the total, with ``prior_runs``)."""
    dp = config.dp
    if not dp.enabled:
        return None
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    if dp.target_epsilon is None:
        raise ValueError(
            "A private run needs dp.noise_multiplier or dp.target_epsilon "
            "(e.g. --epsilon 8); for a non-private baseline disable DP explicitly."
        )
    with cli.announce_after(2.0, f"Calibrating the noise multiplier sigma for epsilon={dp.target_epsilon:g} over "
                                 f"{steps} steps ({dp.accountant.upper()} accountant; this can take a minute)..."):
        return accounting.calibrate_noise(
            target_epsilon=dp.target_epsilon,
            sampling_probability=config.batch_size / dataset_size,
            steps=steps,
            delta=dp.delta,
            accountant=dp.accountant,
            prior_runs=prior_runs,
        )


def validate(config, train):
    """Clear errors for a configuration that cannot run on ``train``."""
    n = len(train)
    if n < 1:
        raise ValueError("The training set is empty.")
    if not 0 < config.batch_size <= n:
        raise ValueError(
            f"batch_size={config.batch_size} must be in [1, {n}] (the training set size)."
        )
    if config.physical_batch_size < 1:
        raise ValueError(f"physical_batch_size must be >= 1, got {config.physical_batch_size}.")
    if config.dp.enabled and not config.dp.l2_clip > 0:
        raise ValueError(f"l2_clip must be > 0, got {config.dp.l2_clip}.")
    if config.augmult.num_views < 1:
        raise ValueError(f"augmult must be >= 1, got {config.augmult.num_views}.")
    if config.ema.decay is not None and not 0 <= config.ema.decay < 1:
        raise ValueError(f"EMA decay must be in [0, 1), got {config.ema.decay}.")
    if config.linear_probe and config.trainable != "head":
        raise ValueError(f"linear probing trains the classifier only: trainable must be 'head', got "
                         f"{config.trainable!r}.")
    if config.optim.learning_rate <= 0:
        raise ValueError(f"learning rate must be > 0, got {config.optim.learning_rate}.")
