"""DP-SGD as a dp-accounting event, and the epsilon of that event.

What the engine does is

    SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)

under add-or-remove-one adjacency, with one example as the privacy unit;
earlier runs on the same data set (a private initial checkpoint's) are
composed with it in one accountant.
"""

import functools

import dp_accounting
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from dp_zoo.accounting.checks import (
    check_accountant,
    check_delta,
    check_positive,
    check_pld_sigma,
    check_prior_runs,
    check_q,
    check_sampling,
    check_steps,
)

ADJACENCY = "add_or_remove_one"
PRIVACY_UNIT = "example"
# PLD discretisation: 1e-4 is dp-accounting's default; the error it adds to
# epsilon is far below the 1e-3 relative accuracy we report.
DEFAULT_PLD_DISCRETIZATION = 1e-4


def dp_accounting_version():
    """The installed dp-accounting version (recorded on every model card)."""
    try:
        from importlib import metadata

        return metadata.version("dp-accounting")
    except Exception:  # pragma: no cover - metadata always present when pip-installed
        return getattr(dp_accounting, "__version__", "unknown")


def dp_sgd_event(noise_multiplier, sampling_probability, steps):
    """The dp-accounting event for ``steps`` Poisson-sampled Gaussian steps."""
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(
            sampling_probability, dp_event.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )


def dp_sgd_runs_event(runs):
    """One event for several DP-SGD runs ``((sigma, q, steps), ...)`` on the same data set (composed)."""
    events = [dp_sgd_event(*r) for r in runs]
    return events[0] if len(events) == 1 else dp_event.ComposedDpEvent(events)


def make_accountant(accountant="pld", *, pld_discretization=DEFAULT_PLD_DISCRETIZATION):
    """A fresh dp-accounting accountant (add-or-remove-one adjacency)."""
    check_accountant(accountant)
    rel = dp_accounting.privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "pld":
        return pld_privacy_accountant.PLDAccountant(
            neighboring_relation=rel,
            value_discretization_interval=pld_discretization,
        )
    return rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)


@functools.lru_cache(maxsize=4096)
def epsilon_of_runs(runs, delta, accountant, pld_discretization):
    """Epsilon of validated runs ``((sigma, q, steps), ...)`` composed; cached by its arguments.

    A run asks for the same configuration many times (the ledger, the CLI,
    the card), and one PLD epsilon takes up to tens of seconds.
    """
    acc = make_accountant(accountant, pld_discretization=pld_discretization)
    acc.compose(dp_sgd_runs_event(runs))
    return float(acc.get_epsilon(delta))


def epsilon(
    *,
    noise_multiplier,
    sampling_probability,
    steps,
    delta,
    accountant="pld",
    sampling="poisson",
    pld_discretization=DEFAULT_PLD_DISCRETIZATION,
    prior_runs=(),
):
    """Epsilon of DP-SGD with Poisson sampling.

    Args:
      noise_multiplier: sigma (noise std / clipping norm), > 0.
      sampling_probability: q = expected batch size / data set size, in (0, 1].
      steps: number of noisy updates, >= 1.
      delta: target delta, in (0, 1).
      accountant: "pld" (default, tight) or "rdp" (conservative).
      sampling: must be "poisson" (see ``dp_zoo.accounting``).
      pld_discretization: PLD value discretisation interval.
      prior_runs: earlier DP-SGD runs on the same data set, ``((sigma, q,
        steps), ...)`` (a private initial checkpoint's), composed with this
        one in a single accountant.

    Returns:
      The epsilon at ``delta`` (a float; ``inf`` if unbounded).

    Raises:
      ValueError: an invalid argument; also ``accountant="pld"`` with
        ``noise_multiplier < PLD_MIN_NOISE_MULTIPLIER``, refused at once
        rather than computed for minutes (pass ``accountant="rdp"``; RDP's
        epsilon there is honest, if huge or inf).
    """
    check_positive(
        "noise_multiplier", noise_multiplier,
        "DP-SGD needs Gaussian noise; use e.g. noise_multiplier=1.0, or "
        "calibrate it with calibrate_noise(target_epsilon=...).",
    )
    check_q(sampling_probability)
    check_steps(steps)
    check_delta(delta)
    check_accountant(accountant)
    check_sampling(sampling)
    check_pld_sigma(noise_multiplier, accountant)
    runs = check_prior_runs(prior_runs, accountant) + (
        (float(noise_multiplier), float(sampling_probability), int(steps)),)
    return epsilon_of_runs(runs, float(delta), accountant, float(pld_discretization))
