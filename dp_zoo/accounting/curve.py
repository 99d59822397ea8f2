"""Cheap per-step answers for ``PrivacyLedger`` from a few exact epsilons.

An exact PLD epsilon costs from a fraction of a second to tens of seconds
(more at small noise multipliers, see ``pld_limit``), and a run asks for one
after every step: for the history, the progress bar and the budget guard.
Epsilon is monotone non-decreasing in the number of steps, so both questions
can be answered from a few exact values:

- ``StepCurve``: exact epsilons at a fixed grid of step counts, each computed
  once, when first needed. The epsilon at the smallest grid point >= n is an
  upper bound of the epsilon after n steps (never below it, never above the
  exact value at the next grid point).
- ``BudgetGuard``: the largest step count known to fit a budget and the
  smallest known not to; a question between them is settled once by a probe
  (the planned steps, or twice what is known to fit) and, if that exceeds the
  budget, a bisection to the exact boundary. Afterwards every question is
  O(1).

Both take the exact accountant as a function ``exact(steps) -> epsilon``, so
every number they return is one that dp-accounting computed for exactly that
step count. Their caches only ever record true facts, so a computation
abandoned in a worker thread (``run_interruptibly``) that finishes later
cannot corrupt them.
"""

import bisect
import math

# Grid: 1, 2, 4, ... below the first point of CURVE_POINTS points spaced
# evenly in sqrt(steps) up to planned_steps. Epsilon grows roughly like
# sqrt(steps), so the second part gives an overestimate of at most about
# epsilon(planned_steps) / CURVE_POINTS in absolute terms (~4%).
CURVE_POINTS = 24


def curve_grid(planned_steps, points=CURVE_POINTS):
    """The step counts at which ``StepCurve`` computes exact epsilons.

    Sorted, distinct, starting at 1 and ending at ``planned_steps``.
    """
    planned = int(planned_steps)
    if planned < 1:
        raise ValueError(f"planned_steps must be >= 1, got {planned_steps!r}.")
    grid = {planned}
    for i in range(1, points + 1):
        grid.add(max(1, math.ceil(planned * (i / points) ** 2)))
    first = min(grid)
    p = 1
    while p < first:
        grid.add(p)
        p *= 2
    return tuple(sorted(grid))


class StepCurve:
    """Exact epsilons at ``curve_grid(planned_steps)``, computed lazily.

    Args:
      planned_steps: the last grid point (the run's planned step count).
      exact: ``exact(steps) -> float``, the exact accountant.
    """

    def __init__(self, planned_steps, exact):
        self.steps = curve_grid(planned_steps)
        self._exact = exact
        self._values = {}

    @property
    def planned_steps(self):
        return self.steps[-1]

    def covers(self, n):
        return 1 <= n <= self.steps[-1]

    def value_at(self, g):
        """The exact epsilon at grid point ``g`` (computed once)."""
        v = self._values.get(g)
        if v is None:
            v = float(self._exact(g))
            self._values[g] = v
        return v

    def upper(self, n):
        """Exact epsilon at the smallest grid point >= n (requires ``covers(n)``)."""
        return self.value_at(self.steps[bisect.bisect_left(self.steps, n)])

    def computed(self):
        """The (steps, epsilon) pairs computed so far, sorted."""
        return sorted(self._values.items())


class BudgetGuard:
    """Which step counts fit a budget, settled with few exact computations.

    Args:
      fits: ``fits(steps) -> bool``, exact (epsilon(steps) <= target).
      planned_steps: optional; the first probe when a question lies below it.
    """

    def __init__(self, fits, planned_steps=None):
        self._fits = fits
        self._planned = None if planned_steps is None else int(planned_steps)
        self.ok = 0          # every step count <= ok fits
        self.bad = None      # every step count >= bad does not (None: none known)

    def fits(self, m):
        """Whether ``m`` steps in total stay within the budget (exact)."""
        if m <= self.ok:
            return True
        if self.bad is not None and m >= self.bad:
            return False
        self._settle(m)
        return m <= self.ok

    def _learn_ok(self, n):
        self.ok = max(self.ok, n)

    def _learn_bad(self, n):
        self.bad = n if self.bad is None else min(self.bad, n)

    def _settle(self, m):
        if self.bad is None:
            # One probe far enough ahead that a run asking step after step
            # needs O(log steps) exact computations in all: the planned
            # steps, or twice what is known to fit.
            probe = max(m, 2 * self.ok)
            if self._planned is not None and m <= self._planned:
                probe = max(probe, self._planned)
            if self._fits(probe):
                self._learn_ok(probe)
                return
            self._learn_bad(probe)
        # The boundary lies in (ok, bad): bisect to it.
        lo, hi = self.ok, self.bad
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._fits(mid):
                lo = mid
            else:
                hi = mid
        self._learn_ok(lo)
        self._learn_bad(hi)
