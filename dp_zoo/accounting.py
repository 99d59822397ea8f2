"""Privacy accounting for DP-SGD, built on Google's dp-accounting.

Every epsilon dp_zoo prints or writes comes from the functions here, computed
for exactly what the engine does (DESIGN.md §4):

    SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)

under add-or-remove-one adjacency, with one example as the privacy unit.
Augmentation multiplicity does not change this: each example still
contributes one clipped gradient per step.

Two accountants are offered:

- ``"pld"``: privacy loss distributions (Koskela et al. 2020; Doroshenko et
  al. 2022). Tight up to discretisation; dp_zoo's default.
- ``"rdp"``: Rényi DP (Mironov 2017; Mironov, Talwar, Zhang 2019), with
  dp-accounting's default orders. Looser (a larger, more conservative
  epsilon); what De et al. 2022 reported.

Cost. One exact PLD epsilon takes from a fraction of a second to minutes,
growing fast as sigma shrinks (measurements in ``dp_zoo.accounting_curve``).
So ``epsilon(accountant="pld")`` refuses sigma < ``PLD_MIN_NOISE_MULTIPLIER``
(use "rdp"), the ledger accounts such runs with RDP and says so in its
summary, its per-step answers (``can_step``, ``epsilon_upper``) come from a
few cached exact values, and ``run_interruptibly`` keeps the main thread
responsive to a stop request while an accounting call runs.

Sampling. The guarantee assumes Poisson sampling: every example joins a step
independently with probability q. Fixed-size batches drawn by shuffling are
*not* covered by this analysis (its amplification by subsampling differs, and
an accountant that silently applied the Poisson bound to shuffled batches
would overstate the guarantee), so ``sampling="shuffle"`` is refused with an
error rather than accounted optimistically.
"""

import functools
import math
import warnings

import dp_accounting
from dp_accounting import dp_event
from dp_accounting import mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from dp_zoo.accounting_curve import (  # noqa: F401 - AccountingInterrupted, run_interruptibly re-exported
    PLD_MIN_NOISE_MULTIPLIER,
    AccountingInterrupted,
    BudgetGuard,
    StepCurve,
    pld_fallback,
    pld_refusal,
    run_interruptibly,
)

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson",)
ADJACENCY = "add_or_remove_one"
PRIVACY_UNIT = "example"
# PLD discretisation: 1e-4 is dp-accounting's default; the error it adds to
# epsilon is far below the 1e-3 relative accuracy we report.
DEFAULT_PLD_DISCRETIZATION = 1e-4
# calibrate_noise never goes below the sigma where PLD becomes impractical.
_MIN_SIGMA = PLD_MIN_NOISE_MULTIPLIER


class BudgetExceededError(RuntimeError):
    """Raised when a step would spend more than the target epsilon."""


def dp_accounting_version():
    """The installed dp-accounting version (recorded on every model card)."""
    try:
        from importlib import metadata

        return metadata.version("dp-accounting")
    except Exception:  # pragma: no cover - metadata always present when pip-installed
        return getattr(dp_accounting, "__version__", "unknown")


# ---------------------------------------------------------------------------
# Validation: each check names the problem and the fix.


def _check_positive(name, value, fix):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; {fix}")


def _check_q(q):
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q <= 1:
        raise ValueError(
            f"sampling_probability must be in (0, 1], got {q!r}; it is "
            "batch_size / dataset_size (use a batch size <= the data set size)."
        )


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"steps must be an integer >= 1, got {steps!r}; pass the number of "
            "noisy updates the run takes."
        )


def _check_delta(delta):
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(
            f"delta must be in (0, 1), got {delta!r}; a common choice is "
            "delta < 1/N for a data set of N examples (e.g. 1e-5 for N=50,000)."
        )


def _check_accountant(accountant):
    if accountant not in ACCOUNTANTS:
        raise ValueError(
            f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}; "
            "'pld' is tighter, 'rdp' is what De et al. 2022 reported."
        )


def _check_pld_sigma(noise_multiplier, accountant):
    error = pld_refusal(noise_multiplier, accountant)
    if error:
        raise ValueError(error)


def _check_sampling(sampling):
    if sampling == "shuffle":
        raise ValueError(
            "sampling='shuffle' (fixed-size shuffled batches) is not supported: "
            "the Poisson-sampling analysis does not cover it and dp_zoo will not "
            "claim an epsilon it cannot prove. Use sampling='poisson' (the "
            "engine's default)."
        )
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be 'poisson', got {sampling!r}.")


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


# ---------------------------------------------------------------------------
# Core functions.


def dp_sgd_event(noise_multiplier, sampling_probability, steps):
    """The dp-accounting event for ``steps`` Poisson-sampled Gaussian steps."""
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(
            sampling_probability, dp_event.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )


def make_accountant(accountant="pld", *, pld_discretization=DEFAULT_PLD_DISCRETIZATION):
    """A fresh dp-accounting accountant (add-or-remove-one adjacency)."""
    _check_accountant(accountant)
    rel = dp_accounting.privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "pld":
        return pld_privacy_accountant.PLDAccountant(
            neighboring_relation=rel,
            value_discretization_interval=pld_discretization,
        )
    return rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)


def dp_sgd_runs_event(runs):
    """One event for several DP-SGD runs ``((sigma, q, steps), ...)`` on the same data set (composed)."""
    events = [dp_sgd_event(*r) for r in runs]
    return events[0] if len(events) == 1 else dp_event.ComposedDpEvent(events)


def _check_prior_runs(prior_runs, accountant):
    """``prior_runs`` as a tuple of ``(sigma, q, steps)`` float/float/int triples, validated."""
    out = []
    for run in prior_runs or ():
        sigma, q, steps = run
        _check_positive("a prior run's noise_multiplier", sigma, "prior runs come from a private model card.")
        _check_q(q)
        _check_steps(steps)
        _check_pld_sigma(sigma, accountant)
        out.append((float(sigma), float(q), int(steps)))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(runs, delta, accountant, pld_discretization):
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
      sampling: must be "poisson" (see module docstring).
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
    _check_positive(
        "noise_multiplier", noise_multiplier,
        "DP-SGD needs Gaussian noise; use e.g. noise_multiplier=1.0, or "
        "calibrate it with calibrate_noise(target_epsilon=...).",
    )
    _check_q(sampling_probability)
    _check_steps(steps)
    _check_delta(delta)
    _check_accountant(accountant)
    _check_sampling(sampling)
    _check_pld_sigma(noise_multiplier, accountant)
    runs = _check_prior_runs(prior_runs, accountant) + (
        (float(noise_multiplier), float(sampling_probability), int(steps)),)
    return _epsilon_cached(runs, float(delta), accountant, float(pld_discretization))


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
    _check_positive("target_epsilon", target_epsilon, "pass the privacy budget, e.g. target_epsilon=8.0.")
    _check_q(sampling_probability)
    _check_steps(steps)
    _check_delta(delta)
    _check_accountant(accountant)
    _check_sampling(sampling)
    # Cached: a run calibrates the same configuration several times (the CLI,
    # the TAN record, the simulation), and one PLD calibration takes seconds
    # to a minute.
    prior = _check_prior_runs(prior_runs, accountant)
    if prior:
        spent = _epsilon_cached(prior, float(delta), accountant, float(pld_discretization))
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
    _check_positive("target_epsilon", target_epsilon, "pass the privacy budget, e.g. target_epsilon=8.0.")
    _check_positive("noise_multiplier", noise_multiplier, "use e.g. noise_multiplier=1.0.")
    _check_q(sampling_probability)
    _check_delta(delta)
    _check_accountant(accountant)
    _check_sampling(sampling)

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


# ---------------------------------------------------------------------------
# The ledger: what a run has actually spent.


class PrivacyLedger:
    """Counts the noisy steps a run actually took and what they cost.

    The engine calls ``record_step()`` after each noisy update (including an
    update it skipped for non-finite values: the noise was drawn from the
    data, so the privacy was spent). With a ``target_epsilon`` the ledger is
    also the budget guard: ``record_step`` refuses a step that would exceed
    it, before the step is taken (the engine asks ``can_step`` first).

    Per-step questions are cheap (see ``dp_zoo.accounting_curve``):
    ``can_step`` is exact and O(1) once the budget boundary, or that the
    planned steps fit, is known; ``epsilon_upper`` is a cached upper bound for
    displays. ``epsilon`` and ``epsilon_after`` are exact (one accountant call
    each, cached by configuration): use them at log points and at the end.

    Args:
      noise_multiplier: sigma.
      sampling_probability: q.
      delta: the delta at which epsilon is reported.
      dataset_size: N (recorded; used for the delta >= 1/N warning).
      target_epsilon: optional budget.
      accountant: "pld" or "rdp"; the reported epsilon uses this one, except
        that "pld" below ``PLD_MIN_NOISE_MULTIPLIER`` is accounted with RDP
        (``effective_accountant``; ``summary`` says so).
      sampling: "poisson".
      private: False for a non-private baseline: then no epsilon is ever
        reported.
      steps: steps already spent.
      planned_steps: optional, the number of steps the run plans; enables
        ``epsilon_upper``'s grid and makes it the first thing ``can_step``
        checks. Not part of the ledger's identity or checkpoint.
      prior_runs: DP-SGD runs ``((sigma, q, steps), ...)`` that produced the
        initial checkpoint on the same data set; every epsilon (and the
        budget) is the composition of those and this run's steps.
    """

    def __init__(
        self,
        noise_multiplier,
        sampling_probability,
        delta,
        dataset_size,
        target_epsilon=None,
        accountant="pld",
        sampling="poisson",
        private=True,
        steps=0,
        planned_steps=None,
        prior_runs=(),
    ):
        self.private = bool(private)
        if self.private:
            _check_positive("noise_multiplier", noise_multiplier, "use e.g. noise_multiplier=1.0.")
            _check_q(sampling_probability)
            _check_delta(delta)
            _check_accountant(accountant)
            _check_sampling(sampling)
            if target_epsilon is not None:
                _check_positive("target_epsilon", target_epsilon, "pass e.g. target_epsilon=8.0.")
            check_delta_for_dataset(delta, dataset_size)
        if planned_steps is not None:
            _check_steps(planned_steps)
        self.noise_multiplier = None if noise_multiplier is None else float(noise_multiplier)
        self.sampling_probability = float(sampling_probability)
        self.delta = float(delta)
        self.dataset_size = int(dataset_size)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.accountant = accountant
        self.sampling = sampling
        self.steps = int(steps)
        self.planned_steps = None if planned_steps is None else int(planned_steps)
        self.prior_runs = tuple((float(a), float(b), int(c)) for a, b, c in (prior_runs or ()))
        self._cache_key = self._curve = self._guard = None

    def _min_sigma(self):
        return min([self.noise_multiplier] + [r[0] for r in self.prior_runs])

    @property
    def effective_accountant(self):
        """The accountant epsilon comes from: ``accountant``, or "rdp" for a PLD fallback."""
        return pld_fallback(self._min_sigma(), self.accountant)[0] if self.private else self.accountant

    @property
    def accountant_note(self):
        """Why ``effective_accountant`` differs from ``accountant`` (None if it does not)."""
        return pld_fallback(self._min_sigma(), self.accountant)[1] if self.private else None

    def _caches(self):
        """The curve and budget guard, rebuilt if the configuration changed."""
        key = (self.noise_multiplier, self.sampling_probability, self.delta, self.target_epsilon,
               self.effective_accountant, self.planned_steps, self.prior_runs)
        if key != self._cache_key:
            self._curve = None if self.planned_steps is None else StepCurve(self.planned_steps, self._exact)
            target = self.target_epsilon
            self._guard = BudgetGuard(lambda n: self._exact(n) <= target, planned_steps=self.planned_steps)
            self._cache_key = key
        return self._curve, self._guard

    # -- spending ---------------------------------------------------------

    def _exact(self, n, accountant=None):
        accountant = accountant or self.effective_accountant
        if int(n) == 0:
            if not self.prior_runs:
                return 0.0
            return _epsilon_cached(_check_prior_runs(self.prior_runs, accountant), self.delta, accountant,
                                   DEFAULT_PLD_DISCRETIZATION)
        return epsilon(
            noise_multiplier=self.noise_multiplier,
            sampling_probability=self.sampling_probability,
            steps=int(n),
            delta=self.delta,
            accountant=accountant,
            prior_runs=self.prior_runs,
        )

    def epsilon_after(self, extra_steps=0, accountant=None):
        """Exact epsilon after ``steps + extra_steps`` steps (None if non-private).

        ``accountant`` defaults to ``effective_accountant``; asking for "pld"
        explicitly below ``PLD_MIN_NOISE_MULTIPLIER`` raises ValueError.
        """
        if not self.private:
            return None
        return self._exact(self.steps + int(extra_steps), accountant)

    def epsilon(self, accountant=None):
        """Exact epsilon spent so far (None for a non-private run)."""
        return self.epsilon_after(0, accountant)

    def epsilon_upper(self, steps=None):
        """An upper bound of the epsilon after ``steps`` steps, cheap per step.

        With ``planned_steps``: the exact epsilon (``effective_accountant``)
        at the smallest point >= ``steps`` of a grid (``curve_steps()``: 1, 2,
        4, ... then 24 points evenly spaced in sqrt(steps) up to
        ``planned_steps``); each grid point is computed once, when first
        needed, so a run pays about 30 exact computations in all. Since
        epsilon is monotone in the number of steps, the result is >= the
        exact epsilon at ``steps`` and overstates it by at most the increase
        to the next grid point (about epsilon(planned_steps)/24 late in the
        run). Beyond ``planned_steps``, or without it: the exact epsilon.
        For displays and histories labelled as bounds; report ``epsilon()``.

        Args:
          steps: step count; default the steps spent.

        Returns:
          float (0.0 at zero steps), or None for a non-private run.
        """
        if not self.private:
            return None
        n = self.steps if steps is None else int(steps)
        if n <= 0:
            return self._exact(0)
        curve = self._caches()[0]
        if curve is not None and curve.covers(n):
            return curve.upper(n)
        return self._exact(n)

    def curve_steps(self):
        """The step counts where ``epsilon_upper`` is exact (() without a plan)."""
        curve = self._caches()[0]
        return () if curve is None else curve.steps

    def can_step(self, n=1):
        """Whether ``n`` more steps stay within the target epsilon (exact).

        O(1) once settled: the first question computes whether the planned
        steps fit (one exact epsilon) and, if they do not, bisects to the
        largest step count that does (~log2(planned_steps) exact epsilons);
        a question beyond everything known probes twice the known-good count
        first. Each answer agrees with ``epsilon_after(n) <= target_epsilon``.
        """
        if not self.private or self.target_epsilon is None:
            return True
        return self._caches()[1].fits(self.steps + int(n))

    def record_step(self, n=1):
        """Records ``n`` steps taken; refuses steps beyond the budget.

        Raises:
          BudgetExceededError: the steps would exceed ``target_epsilon``.
        """
        if not self.can_step(n):
            raise BudgetExceededError(
                f"Privacy budget exhausted: {self.steps} steps spent "
                f"epsilon={self.epsilon():.4f}; {n} more would give "
                f"epsilon={self.epsilon_after(n):.4f} > target_epsilon="
                f"{self.target_epsilon:g} (delta={self.delta:g}). Stop training, "
                "or plan a run with fewer steps or more noise."
            )
        self.steps += int(n)

    # -- persistence --------------------------------------------------------

    def _identity(self):
        return {
            "noise_multiplier": self.noise_multiplier,
            "sampling_probability": self.sampling_probability,
            "delta": self.delta,
            "dataset_size": self.dataset_size,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "sampling": self.sampling,
            "private": self.private,
            "prior_runs": [list(r) for r in self.prior_runs],
        }

    def to_dict(self):
        """The ledger's state, for checkpoints."""
        d = self._identity()
        d["steps"] = self.steps
        return d

    @classmethod
    def from_dict(cls, d, expect=None):
        """Restores a ledger; with ``expect`` (a ledger), refuses a mismatch.

        A checkpoint made under one privacy configuration must not be resumed
        under another: the steps already spent were accounted for with the
        stored parameters.
        """
        d = dict(d)
        d.setdefault("prior_runs", [])  # checkpoints written before prior runs were recorded
        ledger = cls(**d)
        if expect is not None and ledger._identity() != expect._identity():
            diff = {
                k: (ledger._identity()[k], expect._identity()[k])
                for k in ledger._identity()
                if ledger._identity()[k] != expect._identity()[k]
            }
            raise ValueError(
                "The checkpoint's privacy ledger was made with a different "
                f"configuration (checkpoint, now): {diff}. Resume with the "
                "original settings, or start a new run in a new directory."
            )
        return ledger

    def summary(self, tan_simulation=None):
        """The "privacy" section of a run record (see model cards).

        Args:
          tan_simulation: optional dict from ``dp_zoo.tan.tan_info``.
        """
        d = {
            "private": self.private,
            "delta": self.delta,
            "accountant": self.effective_accountant if self.private else None,
            "accountant_requested": self.accountant if self.private else None,
            "dp_accounting_version": dp_accounting_version(),
            "noise_multiplier": self.noise_multiplier if self.private else 0.0,
            "sampling": self.sampling,
            "sampling_probability": self.sampling_probability,
            "dataset_size": self.dataset_size,
            "expected_batch_size": self.sampling_probability * self.dataset_size,
            "steps": self.steps,
            "target_epsilon": self.target_epsilon,
            "adjacency": ADJACENCY,
            "privacy_unit": PRIVACY_UNIT,
            "tan_simulation": tan_simulation,
        }
        if self.prior_runs:
            d["prior_runs"] = [{"noise_multiplier": a, "sampling_probability": b, "steps": c}
                               for a, b, c in self.prior_runs]
        if self.private and self.accountant_note:
            d["accountant_note"] = self.accountant_note
        if self.private:
            # No PLD below PLD_MIN_NOISE_MULTIPLIER (minutes and gigabytes).
            with_pld = self._min_sigma() >= PLD_MIN_NOISE_MULTIPLIER
            d["epsilon_pld"] = self.epsilon("pld") if with_pld else None
            d["epsilon_rdp"] = self.epsilon("rdp")
            d["epsilon"] = d["epsilon_" + self.effective_accountant]
        else:
            d["epsilon_pld"] = d["epsilon_rdp"] = d["epsilon"] = None
        return d
