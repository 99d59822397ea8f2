"""The privacy ledger: what a run has actually spent, and its budget guard.

Per-step questions are answered from a few cached exact epsilons (``curve``);
below ``PLD_MIN_NOISE_MULTIPLIER`` the ledger accounts with RDP and says so
in its summary (``pld_limit``).
"""

from dp_zoo.accounting.checks import (
    check_accountant,
    check_delta,
    check_delta_for_dataset,
    check_positive,
    check_prior_runs,
    check_q,
    check_sampling,
    check_steps,
)
from dp_zoo.accounting.curve import BudgetGuard, StepCurve
from dp_zoo.accounting.events import (
    ADJACENCY,
    DEFAULT_PLD_DISCRETIZATION,
    PRIVACY_UNIT,
    dp_accounting_version,
    epsilon,
    epsilon_of_runs,
)
from dp_zoo.accounting.pld_limit import PLD_MIN_NOISE_MULTIPLIER, pld_fallback


class BudgetExceededError(RuntimeError):
    """Raised when a step would spend more than the target epsilon."""


class PrivacyLedger:
    """Counts the noisy steps a run actually took and what they cost.

    The engine calls ``record_step()`` after each noisy update (including an
    update it skipped for non-finite values: the noise was drawn from the
    data, so the privacy was spent). With a ``target_epsilon`` the ledger is
    also the budget guard: ``record_step`` refuses a step that would exceed
    it, before the step is taken (the engine asks ``can_step`` first).

    Per-step questions are cheap (see ``dp_zoo.accounting.curve``):
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
            check_positive("noise_multiplier", noise_multiplier, "use e.g. noise_multiplier=1.0.")
            check_q(sampling_probability)
            check_delta(delta)
            check_accountant(accountant)
            check_sampling(sampling)
            if target_epsilon is not None:
                check_positive("target_epsilon", target_epsilon, "pass e.g. target_epsilon=8.0.")
            check_delta_for_dataset(delta, dataset_size)
        if planned_steps is not None:
            check_steps(planned_steps)
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
            return epsilon_of_runs(check_prior_runs(self.prior_runs, accountant), self.delta, accountant,
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
          tan_simulation: optional dict from ``dp_zoo.engine.tan.tan_info``.
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
