"""TAN: hyper-parameter search by scaled-down runs at constant total noise.

After Sander, Stock, Sablayrolles 2023, "TAN without a burn: scaling laws of
DP-SGD" (arXiv 2210.03403). Two quantities matter:

- the *total amount of noise* ``eta = sigma / (q * sqrt(S))`` (their
  Definition: sigma the noise multiplier, q the sampling rate, S the number
  of steps), on which epsilon mostly depends when sigma is not too small;
- the *effective noise per step* ``sigma / B`` (B = q * N the expected
  batch), which with S fixed governs the training dynamics.

A simulation divides both B and sigma by a factor k: the per-step
signal-to-noise ratio B / sigma and the step count stay fixed, so training
behaves like the full run at k times less compute. Its epsilon is much larger
than the full run's: a simulated run is *not private at the full run's
epsilon*, and every record of it says so (``tan_info``).
"""

import dataclasses
import math

from dp_zoo import accounting
from dp_zoo.engine import resolve


def total_amount_of_noise(*, noise_multiplier, sampling_probability, steps):
    """TAN ``eta = sigma / (q * sqrt(steps))``."""
    if sampling_probability <= 0 or steps < 1:
        raise ValueError("sampling_probability must be > 0 and steps >= 1.")
    return noise_multiplier / (sampling_probability * math.sqrt(steps))


def effective_noise(*, noise_multiplier, batch_size):
    """Noise std of the averaged gradient per unit clip: ``sigma / B``."""
    return noise_multiplier / batch_size


def _resolve_sigma(config, dataset_size):
    """The full run's sigma, from ``resolve.resolve_config`` (given, or calibrated for its target epsilon)."""
    if not config.dp.enabled:
        raise ValueError("A non-private configuration has no noise to scale; TAN needs a DP config.")
    if config.dp.noise_multiplier is None and config.dp.target_epsilon is None:
        raise ValueError(
            "The configuration has neither dp.noise_multiplier nor "
            "dp.target_epsilon; set one of them before simulating."
        )
    if config.steps is None:
        raise ValueError("Set config.steps before simulating (TAN keeps the step count fixed).")
    return resolve.resolve_config(config, dataset_size).noise_multiplier


def simulate(config, factor, *, dataset_size):
    """The scaled-down TAN simulation of a training configuration.

    Args:
      config: a ``dp_zoo.recipes.config.TrainConfig`` of the full run, with
        ``steps`` set and either ``dp.noise_multiplier`` or
        ``dp.target_epsilon`` (then sigma is calibrated first).
      factor: k > 1; batch size and sigma are divided by it.
      dataset_size: N of the training data.

    Returns:
      A new TrainConfig: ``batch_size / k``, ``noise_multiplier / k``, same
      steps, ``tan_simulation_factor = k``, no ``target_epsilon`` (the
      simulation is bounded by its step count; its budget is not the full
      run's). ``physical_batch_size`` is capped at the new batch size.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise ValueError(
            f"TAN factor must be a number > 1, got {factor!r}; e.g. --tan-simulate 16 "
            "divides batch size and noise by 16."
        )
    if not config.dp.enabled:
        raise ValueError("A non-private configuration has no noise to scale; TAN needs a DP config.")
    if config.tan_simulation_factor is not None:
        raise ValueError("This configuration is already a TAN simulation; simulate the full run.")
    sigma = _resolve_sigma(config, dataset_size)
    batch = config.batch_size / factor
    if batch < 1:
        raise ValueError(
            f"TAN factor {factor:g} leaves an expected batch of {batch:.3g} < 1 "
            f"(batch_size={config.batch_size}); use a smaller factor."
        )
    new_batch = max(1, int(round(batch)))
    # sigma is scaled by the batch actually simulated (B/k rounded to an
    # integer), so that sigma / B, and the total amount of noise, stay exactly
    # the full run's.
    return dataclasses.replace(
        config,
        batch_size=new_batch,
        physical_batch_size=min(config.physical_batch_size, new_batch),
        tan_simulation_factor=float(factor),
        dp=dataclasses.replace(
            config.dp, noise_multiplier=sigma * new_batch / config.batch_size, target_epsilon=None,
            # Adaptive clipping's count noise scales with the batch too (None, B / 20, does so itself),
            # so that the count's noise per example, and sigma_grad / sigma, stay the full run's.
            count_noise=None if config.dp.count_noise is None
            else config.dp.count_noise * new_batch / config.batch_size,
        ),
    )


def tan_info(full_config, factor, *, dataset_size):
    """The ``privacy.tan_simulation`` section of a simulated run's record.

    Args:
      full_config: the full-size configuration that was simulated.
      factor: the simulation factor.
      dataset_size: N.

    Returns:
      dict with the factor, the full run's sigma, batch and epsilon (from the
      accountant, for the full configuration) and the TANs of both.
    """
    sigma = _resolve_sigma(full_config, dataset_size)
    q_full = full_config.batch_size / dataset_size
    sim = simulate(full_config, factor, dataset_size=dataset_size)
    eps_full = accounting.epsilon(
        noise_multiplier=sigma,
        sampling_probability=q_full,
        steps=full_config.steps,
        delta=full_config.dp.delta,
        accountant=full_config.dp.accountant,
    )
    return {
        "factor": float(factor),
        "epsilon_full_run": eps_full,
        "noise_multiplier_full_run": sigma,
        "batch_size_full_run": float(full_config.batch_size),
        "steps": full_config.steps,
        "tan_full_run": total_amount_of_noise(
            noise_multiplier=sigma, sampling_probability=q_full, steps=full_config.steps
        ),
        "tan_simulation": total_amount_of_noise(
            noise_multiplier=sim.dp.noise_multiplier,
            sampling_probability=sim.batch_size / dataset_size,
            steps=sim.steps,
        ),
        "note": (
            "TAN simulation: NOT private at epsilon_full_run; its own epsilon "
            "is the record's privacy.epsilon."
        ),
    }
