"""Argument checks of the accounting functions: each names the problem and the fix."""

import math
import warnings

from dp_zoo.accounting.pld_limit import pld_refusal

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson",)


def check_positive(name, value, fix):
    """``value`` must be a finite number > 0; ``fix`` tells the caller what to pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; {fix}")


def check_q(q):
    """The sampling probability must be in (0, 1]."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q <= 1:
        raise ValueError(
            f"sampling_probability must be in (0, 1], got {q!r}; it is "
            "batch_size / dataset_size (use a batch size <= the data set size)."
        )


def check_steps(steps):
    """The number of steps must be an integer >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"steps must be an integer >= 1, got {steps!r}; pass the number of "
            "noisy updates the run takes."
        )


def check_delta(delta):
    """delta must be in (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(
            f"delta must be in (0, 1), got {delta!r}; a common choice is "
            "delta < 1/N for a data set of N examples (e.g. 1e-5 for N=50,000)."
        )


def check_accountant(accountant):
    """The accountant must be one of ``ACCOUNTANTS``."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(
            f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}; "
            "'pld' is tighter, 'rdp' is what De et al. 2022 reported."
        )


def check_pld_sigma(noise_multiplier, accountant):
    """PLD is refused below ``PLD_MIN_NOISE_MULTIPLIER`` (see ``pld_limit``)."""
    error = pld_refusal(noise_multiplier, accountant)
    if error:
        raise ValueError(error)


def check_sampling(sampling):
    """Only Poisson sampling is accounted; shuffled batches are refused by name."""
    if sampling == "shuffle":
        raise ValueError(
            "sampling='shuffle' (fixed-size shuffled batches) is not supported: "
            "the Poisson-sampling analysis does not cover it and dp_zoo will not "
            "claim an epsilon it cannot prove. Use sampling='poisson' (the "
            "engine's default)."
        )
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be 'poisson', got {sampling!r}.")


def check_prior_runs(prior_runs, accountant):
    """``prior_runs`` as a tuple of ``(sigma, q, steps)`` float/float/int triples, validated."""
    out = []
    for run in prior_runs or ():
        sigma, q, steps = run
        check_positive("a prior run's noise_multiplier", sigma, "prior runs come from a private model card.")
        check_q(q)
        check_steps(steps)
        check_pld_sigma(sigma, accountant)
        out.append((float(sigma), float(q), int(steps)))
    return tuple(out)


def check_delta_for_dataset(delta, dataset_size):
    """Warns when delta >= 1/N, where the guarantee becomes meaningless.

    With delta >= 1/N a mechanism that publishes one random example in the
    clear satisfies the definition.

    Returns:
      True if a warning was issued.
    """
    if dataset_size and delta >= 1.0 / dataset_size:
        warnings.warn(
            f"delta={delta:g} is >= 1/N = {1.0 / dataset_size:g} for N={dataset_size}: "
            "a mechanism that leaks one whole example can satisfy such a "
            f"guarantee. Use delta < 1/N, e.g. delta={_suggest_delta(dataset_size):g}.",
            UserWarning,
            stacklevel=2,
        )
        return True
    return False


def _suggest_delta(n):
    return 10.0 ** math.floor(math.log10(1.0 / n) - 0.0) if n > 1 else 1e-5
