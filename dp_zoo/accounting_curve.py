"""Cheap per-step accounting for ``dp_zoo.accounting.PrivacyLedger``.

An exact PLD epsilon costs from a fraction of a second to tens of seconds
(more at small noise multipliers), and a run asks for one after every step:
for the history, the progress bar and the budget guard. Epsilon is monotone
non-decreasing in the number of steps, so both questions can be answered from
a few exact values:

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

Small noise multipliers. The cost of one PLD epsilon grows fast as sigma
shrinks. Measured with dp-accounting 0.6.0 on 2 shared CPU cores (numpy FFTs),
one epsilon at delta=1e-5, time and peak memory, for q=256/1437 T=120 and
q=0.01 T=1000 (other load on the machine inflates the times):

    sigma  0.5: 3.5 s / 4.5 s,  0.23 / 0.19 GB
    sigma  0.3: 6.7 s / 8.3 s,  0.38 / 0.25 GB
    sigma  0.2: 14 s  / 15 s,   0.72 / 0.50 GB   (q=0.001, T=71,589: 29 s, 0.9 GB)
    sigma  0.1: 45 s  / 53 s,   2.4  / 1.7 GB
    sigma 0.05: over 60 s (stopped)              (sigma 0.01: 13 min, 11 GB)

against 0.03-0.15 s for RDP throughout and 0.3-0.6 s for the paper's ImageNet
configuration with PLD (sigma=2.5). Below ``PLD_MIN_NOISE_MULTIPLIER`` PLD is
therefore refused (``pld_refusal``) or replaced by RDP, a valid and more
conservative bound (``pld_fallback``); epsilons there are far above 100
anyway, so RDP's looseness is immaterial.

``run_interruptibly`` runs a long accounting call in a daemon thread so that
the main thread stays responsive to a stop request (a SIGTERM handler that
sets a flag) while numpy runs the FFTs of a PLD composition.

This module does not import dp-accounting or TensorFlow.
"""

import bisect
import math
import threading

# Grid: 1, 2, 4, ... below the first point of CURVE_POINTS points spaced
# evenly in sqrt(steps) up to planned_steps. Epsilon grows roughly like
# sqrt(steps), so the second part gives an overestimate of at most about
# epsilon(planned_steps) / CURVE_POINTS in absolute terms (~4%).
CURVE_POINTS = 24

# 0.2 is also calibrate_noise's lowest sigma. Between 0.2 and 0.5 PLD still
# runs, at 3-30 s and up to ~1 GB per epsilon.
PLD_MIN_NOISE_MULTIPLIER = 0.2


def pld_refusal(noise_multiplier, accountant):
    """The error message for a PLD request below the threshold, else None."""
    if accountant == "pld" and noise_multiplier < PLD_MIN_NOISE_MULTIPLIER:
        return (
            f"PLD accounting at noise_multiplier={noise_multiplier:g} < "
            f"{PLD_MIN_NOISE_MULTIPLIER:g} is impractical (one epsilon takes ~50 s and "
            "2 GB at 0.1, minutes at 0.05, 13 min and 11 GB at 0.01); use "
            "accountant='rdp' (a valid, more conservative bound) or a larger noise_multiplier."
        )
    return None


def pld_fallback(noise_multiplier, accountant):
    """(accountant to use, note or None): RDP instead of PLD below the threshold."""
    if pld_refusal(noise_multiplier, accountant):
        return "rdp", (
            f"PLD was requested, but at noise_multiplier={noise_multiplier:g} < "
            f"{PLD_MIN_NOISE_MULTIPLIER:g} one PLD epsilon takes from tens of seconds and "
            "about a gigabyte to minutes and gigabytes; epsilon is RDP's, a valid and "
            "more conservative (larger) bound."
        )
    return accountant, None


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


class AccountingInterrupted(RuntimeError):
    """A stop was requested while an accounting call was still running."""


def run_interruptibly(fn, should_stop, poll_s=0.2):
    """Runs ``fn()`` in a daemon thread; returns its result, unless stopped.

    The calling thread waits in polls of ``poll_s`` seconds and checks
    ``should_stop()`` after each, so a stop request (e.g. a flag set by a
    SIGTERM handler, which Python runs in the main thread between waits) is
    honoured within about ``poll_s`` even while ``fn`` is in the middle of a
    long numpy computation.

    Args:
      fn: a callable without arguments.
      should_stop: a callable returning True when the caller must stop.
      poll_s: the polling interval in seconds.

    Returns:
      ``fn()``'s result.

    Raises:
      AccountingInterrupted: ``should_stop()`` became True first (also when
        it is True before ``fn`` starts; then ``fn`` is not started). The
        worker thread is abandoned: it finishes in the background and its
        result is discarded; being a daemon, it does not keep the process
        alive.
      Exception: whatever ``fn`` raised, with its traceback.
    """
    if should_stop():
        raise AccountingInterrupted("stop requested before the accounting started")
    box = {}
    done = threading.Event()

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="dp_zoo-accounting", daemon=True).start()
    while not done.wait(poll_s):
        if should_stop():
            raise AccountingInterrupted(
                "stop requested while the accountant was computing; its result is discarded"
            )
    if "error" in box:
        raise box["error"]
    return box["value"]
