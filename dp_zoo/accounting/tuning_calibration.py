"""Per-grid-point noise for private tuning: every point meets one per-trial budget.

``dp_zoo.accounting.tuning`` computes the total of a tuning from the grid
points' runs ``(sigma, q, steps)``: one trial's RDP curve is the pointwise
maximum over the points of (that point's DP-SGD RDP + the score's), and
Papernot & Steinke's theorem turns it into the total. Giving every point the
sigma of the grid's longest run would make a short run pay for a long one's
noise; ``calibrate_points`` instead gives each distinct run shape (q, steps)
its own sigma:

1. for a per-trial budget e, each shape's sigma is the smallest (to ``rtol``)
   whose own curve (training + score) converts to an epsilon <= e at the
   tuning's delta, so every point meets the same per-trial budget;
2. e is the largest (to ``rtol``) whose total, computed from the maximum of
   the points' curves at those sigmas, is <= the target.

The maximum dominates every point's curve at every order by construction,
so the theorem's hypothesis (each trial's RDP at most one common curve) holds
for whatever sigmas step 1 returns; the rule only decides how the budget is
shared. The total is recomputed from the returned sigmas, never assumed.

Both searches are on monotone functions (a point's epsilon falls as its
sigma grows; the total grows with e), solved by regula falsi with the
Illinois modification, which needs a few evaluations where bisection needs
tens: each evaluation is a DP-SGD RDP curve, about a second on 2 cores.
"""

import math

import numpy as np

from dp_zoo.accounting.checks import check_positive
from dp_zoo.accounting.tuning import (
    ORDERS, dp_sgd_rdp, epsilon_from_rdp, gaussian_rdp, total_epsilon, tuned_rdp,
)

SIGMA_FLOOR = 0.3  # as tuning.calibrate: dp_zoo does not calibrate below it


def point_epsilon(sigma, q, steps, score_noise, delta, orders=ORDERS):
    """Epsilon of one trial at one grid point: its DP-SGD run plus the noisy score."""
    rdp = dp_sgd_rdp(sigma, q, steps, orders) + gaussian_rdp(score_noise, orders)
    return epsilon_from_rdp(orders, rdp, delta)[0]


def _boundary(h, x_ok, h_ok, x_bad, h_bad, rtol, max_iter=80):
    """A point x on the feasible side (h(x) >= 0) with h(x) <= rtol, between ``x_ok`` (feasible)
    and ``x_bad`` (infeasible): regula falsi with the Illinois modification, a bisection step
    whenever the secant is unusable."""
    w_ok, w_bad, last = h_ok, h_bad, 0
    for i in range(max_iter):
        if h_ok <= rtol or abs(x_bad - x_ok) <= 1e-9 * max(1.0, abs(x_ok)):
            return x_ok
        x = None
        if math.isfinite(w_bad) and w_ok != w_bad and i % 8 != 7:
            x = x_ok - w_ok * (x_bad - x_ok) / (w_bad - w_ok)
        lo, hi = min(x_ok, x_bad), max(x_ok, x_bad)
        if x is None or not lo < x < hi:
            x = (x_ok + x_bad) / 2
        hx = h(x)
        if hx >= 0:
            x_ok, h_ok, w_ok = x, hx, hx
            w_bad = w_bad / 2 if last == 1 else w_bad
            last = 1
        else:
            x_bad, h_bad, w_bad = x, hx, hx
            w_ok = w_ok / 2 if last == -1 else w_ok
            last = -1
    return x_ok


def sigma_for_epsilon(epsilon, q, steps, score_noise, delta, *, guess=1.0, rtol=1e-3, orders=ORDERS):
    """The smallest sigma >= ``SIGMA_FLOOR`` (to ``rtol`` in epsilon) whose point epsilon is <= ``epsilon``.

    Raises:
      ValueError: the score alone spends ``epsilon`` (no sigma meets it).
    """
    def h(log_sigma):  # >= 0 iff feasible; increasing in sigma
        eps = point_epsilon(math.exp(log_sigma), q, steps, score_noise, delta, orders)
        return math.log(epsilon) - math.log(eps) if eps > 0 else math.inf

    x_floor = math.log(SIGMA_FLOOR)
    h_floor = h(x_floor)
    if h_floor >= 0:
        return SIGMA_FLOOR
    x = max(math.log(guess), x_floor)
    hx = h(x) if x > x_floor else h_floor
    step = 0.1
    if hx >= 0:  # feasible: walk down to an infeasible point
        x_ok, h_ok = x, hx
        x_bad = max(x - step, x_floor)
        h_bad = h(x_bad) if x_bad > x_floor else h_floor
        while h_bad >= 0:
            x_ok, h_ok, step = x_bad, h_bad, step * 2
            x_bad = max(x_bad - step, x_floor)
            h_bad = h(x_bad) if x_bad > x_floor else h_floor
    else:  # infeasible: walk up to a feasible point
        x_bad, h_bad = x, hx
        x_ok = x + step
        h_ok = h(x_ok)
        while h_ok < 0:
            if x_ok > math.log(1e6):
                raise ValueError(f"no noise multiplier up to 1e6 meets a per-trial epsilon of {epsilon:g}: "
                                 "the score noise alone spends more. Raise --score-noise or the target.")
            x_bad, h_bad, step = x_ok, h_ok, step * 2
            x_ok = x_ok + step
            h_ok = h(x_ok)
    return math.exp(_boundary(h, x_ok, h_ok, x_bad, h_bad, rtol))


def calibrate_points(target_epsilon, shapes, score_noise, dist, delta, *, rtol=1e-3, orders=ORDERS):
    """``{(q, steps): sigma}`` for the grid's run shapes: every shape meets one per-trial epsilon,
    the largest (to ``rtol``) whose total over the tuning is <= ``target_epsilon``.

    Args:
      shapes: the grid's distinct ``(sampling_probability, steps)``.
      dist: the ``TrialDistribution`` of the number of trials.

    Raises:
      ValueError: the score noise and the number of trials alone spend the
        target (one line naming the fix).
    """
    check_positive("target_epsilon", target_epsilon, "pass the total budget, e.g. --epsilon 8.")
    shapes = sorted(set((float(q), int(n)) for q, n in shapes))
    if not shapes:
        raise ValueError("calibrate_points needs at least one grid point.")
    score_only = gaussian_rdp(score_noise, orders)
    floor = epsilon_from_rdp(orders, tuned_rdp(orders, score_only, dist), delta)[0]
    if floor >= target_epsilon:
        raise ValueError(f"the score noise and the number of trials alone spend epsilon {floor:.4f} >= "
                         f"the total {target_epsilon:g}: no noise multiplier meets it. Raise --score-noise "
                         "or the target, or lower the mean number of trials.")
    e_floor = epsilon_from_rdp(orders, score_only, delta)[0]  # a trial's epsilon can never go below it
    guesses = {s: 1.0 for s in shapes}
    tried = {}  # e -> (sigmas, total): the result is one of these, never recomputed

    def h(e):  # >= 0 iff the total at per-trial budget e meets the target; decreasing in e
        sig = {s: sigma_for_epsilon(e, *s, score_noise, delta, guess=guesses[s], rtol=rtol / 4, orders=orders)
               for s in shapes}
        guesses.update(sig)
        total = total_epsilon(tuple((sig[(q, n)], q, n) for q, n in shapes), score_noise, dist, delta, orders)
        tried[e] = (sig, total)
        return math.log(target_epsilon) - math.log(total)

    # Bracket e in (e_floor, target): a trial's epsilon never exceeds the total.
    e = 0.7 * target_epsilon
    if e <= e_floor:
        e = (e_floor + target_epsilon) / 2
    he = h(e)
    if he >= 0:
        e_ok, h_ok = e, he
        e_bad = min(e_ok * 1.1, target_epsilon)
        h_bad = h(e_bad)
        while h_bad >= 0:
            e_ok, h_ok, e_bad = e_bad, h_bad, min(e_bad * 1.1, target_epsilon)
            h_bad = h(e_bad)
    else:
        e_bad, h_bad = e, he
        e_ok = e_floor + (e_bad - e_floor) * 0.8
        h_ok = h(e_ok)
        while h_ok < 0:
            if e_ok - e_floor < 1e-9 * target_epsilon:
                raise ValueError(f"no per-trial budget meets the total {target_epsilon:g}: raise --score-noise "
                                 "or the target, or lower the mean number of trials.")
            e_bad, h_bad = e_ok, h_ok
            e_ok = e_floor + (e_ok - e_floor) * 0.5
            h_ok = h(e_ok)
    # _boundary looks for h >= 0 on the x_ok side with h increasing towards it: use x = -e.
    sigmas, total = tried[-_boundary(lambda x: h(-x), -e_ok, h_ok, -e_bad, h_bad, rtol)]
    if not total <= target_epsilon:  # _boundary returns a feasible point: a bug if this fires
        raise AssertionError(f"calibrate_points: total {total} above the target {target_epsilon}")
    return sigmas


def per_point_epsilons(runs, score_noise, delta, orders=ORDERS):
    """Each run's own trial epsilon (its DP-SGD run plus the score), as the record states it."""
    return [point_epsilon(s, q, n, score_noise, delta, orders) for s, q, n in runs]


def point_curves(runs, score_noise, orders=ORDERS):
    """Each run's RDP curve (training + score), one row per run: what the trial curve dominates."""
    return np.array([dp_sgd_rdp(s, q, n, orders) + gaussian_rdp(score_noise, orders) for s, q, n in runs])
