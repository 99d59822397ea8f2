"""Inverting the accountant: the noise multiplier, or the number of steps, that fits a budget."""

import functools

from dp_accounting import mechanism_calibration

from dp_zoo.accounting.checks import (
    check_accountant,
    check_delta,
    check_positive,
    check_prior_runs,
    check_q,
    check_sampling,
    check_steps,
)
from dp_zoo.accounting.events import (
    DEFAULT_PLD_DISCRETIZATION,
    dp_sgd_runs_event,
    epsilon,
    epsilon_of_runs,
    make_accountant,
)
from dp_zoo.accounting.pld_limit import PLD_MIN_NOISE_MULTIPLIER

# calibrate_noise never goes below the sigma where PLD becomes impractical.
_MIN_SIGMA = PLD_MIN_NOISE_MULTIPLIER


def calibrate_noise(
    *,
    target_epsilon,
    sampling_probability,
    steps,
    delta,
    accountant="pld",
    sampling="poisson",
    tol=1e-4,
    pld_discretization=DEFAULT_PLD_DISCRETIZATION,
    prior_runs=(),
):
    """The smallest noise multiplier whose epsilon is <= ``target_epsilon``.

    Args:
      target_epsilon: the budget, > 0 (with ``prior_runs``: the total).
      sampling_probability, steps, delta, accountant, sampling, prior_runs:
        as in ``epsilon``.
      tol: absolute tolerance on sigma. The returned sigma is rounded *up*
        within it, so its epsilon never exceeds the target.

    Returns:
      sigma (float).
    """
    check_positive("target_epsilon", target_epsilon, "pass the privacy budget, e.g. target_epsilon=8.0.")
    check_q(sampling_probability)
    check_steps(steps)
    check_delta(delta)
    check_accountant(accountant)
    check_sampling(sampling)
    # Cached: a run calibrates the same configuration several times (the CLI,
    # the TAN record, the simulation), and one PLD calibration takes seconds
    # to a minute.
    prior = check_prior_runs(prior_runs, accountant)
    if prior:
        spent = epsilon_of_runs(prior, float(delta), accountant, float(pld_discretization))
        if spent >= target_epsilon:
            raise ValueError(
                f"the earlier runs on this data set already spent epsilon={spent:.4f} >= "
                f"target_epsilon={target_epsilon:g}; the target is the total over all of them. Pass a "
                "larger target (e.g. --epsilon), or start from weights not trained on this data set.")
    return _calibrate_noise_cached(float(target_epsilon), float(sampling_probability), int(steps),
                                   float(delta), accountant, float(tol), float(pld_discretization), prior)


@functools.lru_cache(maxsize=256)
def _calibrate_noise_cached(target_epsilon, sampling_probability, steps, delta, accountant, tol,
                            pld_discretization, prior_runs=()):
    # Below sigma=0.2 the PLD of one step needs gigabytes and DP-SGD is not
    # meaningfully private anyway; refuse budgets that would need it.
    eps_min_sigma = epsilon(
        noise_multiplier=_MIN_SIGMA, sampling_probability=sampling_probability,
        steps=steps, delta=delta, accountant=accountant,
        pld_discretization=pld_discretization, prior_runs=prior_runs,
    )
    if eps_min_sigma <= target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon:g} is so large that sigma={_MIN_SIGMA} "
            f"already meets it (epsilon={eps_min_sigma:.3g}); dp_zoo does not "
            "calibrate noise below that. Pass a smaller target_epsilon, or set "
            "noise_multiplier directly."
        )
    sigma = mechanism_calibration.calibrate_dp_mechanism(
        lambda: make_accountant(accountant, pld_discretization=pld_discretization),
        lambda s: dp_sgd_runs_event(prior_runs + ((s, sampling_probability, steps),)),
        target_epsilon,
        delta,
        bracket_interval=mechanism_calibration.LowerEndpointAndGuess(_MIN_SIGMA, 1.0),
        tol=tol,
    )
    sigma = float(sigma)
    # Brent's method returns a point within tol of the boundary; nudge up
    # until the accountant confirms the budget (never report a sigma that
    # overshoots the target epsilon).
    for _ in range(100):
        if epsilon(
            noise_multiplier=sigma, sampling_probability=sampling_probability,
            steps=steps, delta=delta, accountant=accountant,
            pld_discretization=pld_discretization, prior_runs=prior_runs,
        ) <= target_epsilon:
            return sigma
        sigma += tol
    raise RuntimeError("noise calibration did not converge")  # pragma: no cover


def calibrate_steps(
    *,
    target_epsilon,
    noise_multiplier,
    sampling_probability,
    delta,
    accountant="pld",
    sampling="poisson",
    max_steps=10_000_000,
    pld_discretization=DEFAULT_PLD_DISCRETIZATION,
):
    """The largest number of steps whose epsilon is <= ``target_epsilon``.

    Returns:
      steps (int, >= 0; 0 means even one step exceeds the budget).
    """
    check_positive("target_epsilon", target_epsilon, "pass the privacy budget, e.g. target_epsilon=8.0.")
    check_positive("noise_multiplier", noise_multiplier, "use e.g. noise_multiplier=1.0.")
    check_q(sampling_probability)
    check_delta(delta)
    check_accountant(accountant)
    check_sampling(sampling)

    def eps(n):
        return epsilon(
            noise_multiplier=noise_multiplier, sampling_probability=sampling_probability,
            steps=n, delta=delta, accountant=accountant,
            pld_discretization=pld_discretization,
        )

    if eps(1) > target_epsilon:
        return 0
    # Exponential search for an upper bracket, then bisection on integers:
    # epsilon is monotone in steps, so this finds the exact boundary.
    lo, hi = 1, 2
    while eps(hi) <= target_epsilon:
        lo, hi = hi, hi * 2
        if hi > max_steps:
            if eps(max_steps) <= target_epsilon:
                return max_steps
            hi = max_steps  # the boundary lies in (lo, max_steps): bisect there
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if eps(mid) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo
