"""Private hyper-parameter tuning: the RDP of "run a random number of trials, release the best".

Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential Privacy"
(ICLR 2022, arXiv 2110.03620; theorem numbers of arXiv v2). Let Q be a
randomised algorithm whose outputs are totally ordered (here: a trained model
and its noisy validation score, ordered by the score). The tuner A draws a
number of trials K from a distribution that does not depend on the data, runs
Q K times independently and returns only the best output (nothing, "bottom",
when K = 0). Then, for every order lambda > 1:

* **Poisson** (Theorem 6). K ~ Poisson(mu). If Q is (lambda, eps)-RDP and
  (eps_hat, delta_hat)-DP with e^eps_hat <= 1 + 1/(lambda - 1), A is
  (lambda, eps')-RDP with

      eps' = eps + mu * delta_hat + log(mu) / (lambda - 1).

  We take eps_hat = log(1 + 1/(lambda - 1)) (the largest the condition
  allows, so the smallest delta_hat) and delta_hat = the delta of Q's RDP
  curve at eps_hat (dp-accounting's ``compute_delta``, minimised over orders).
  dp_zoo requires mu >= 1, as dp-accounting does.

* **Zero-truncated Poisson** (what ``dp_zoo.tune`` runs for ``poisson:MU``).
  K ~ Poisson(mu) conditioned on K >= 1: the Poisson tuner run again until
  it releases something. Its output "bottom" (K = 0) has probability
  p0 = e^-mu on every data set, so removing it and renormalising gives, with
  eps the Poisson tuner's RDP at order lambda (exact given eps, and
  increasing in it):

      eps_0 = log((e^((lambda-1) eps) - p0) / (1 - p0)) / (lambda - 1)
            <= eps + log(1 / (1 - p0)) / (lambda - 1).

* **Truncated negative binomial** (Theorem 2). K ~ D_{eta,gamma},
  P[K = k] = (1-gamma)^k / (gamma^-eta - 1) * prod_{l<k} (l + eta)/(l + 1)
  for k >= 1 (eta in (-1, inf), gamma in (0, 1); eta = 0 is the logarithmic
  distribution, P[K = k] = (1-gamma)^k / (k log(1/gamma)); eta = 1 the
  geometric). If Q is (lambda, eps)-RDP and (lambda_hat, eps_hat)-RDP for
  some lambda_hat >= 1, A is (lambda, eps')-RDP with

      eps' = eps + (1+eta) (1 - 1/lambda_hat) eps_hat
                 + (1+eta) log(1/gamma) / lambda_hat + log(E[K]) / (lambda - 1),

      E[K] = eta (1-gamma) / (gamma (1 - gamma^eta))   (eta != 0),
             (1/gamma - 1) / log(1/gamma)               (eta = 0).

  We minimise over lambda_hat among the accountant's orders (all > 1; the
  theorem also allows lambda_hat = 1, which we leave out: a smaller set of
  candidates can only give a larger, still valid, bound).

Both bounds hold at each order separately; Renyi divergence is
non-decreasing in the order, so the value at a higher order also bounds a
lower one, and we keep the smaller (``_monotone``). The total is converted
to (eps, delta) with dp-accounting's conversion (``compute_epsilon``:
Canonne, Kamath & Steinke 2020, Prop. 12), minimised over orders.

Q itself, as dp_zoo runs it (docs/privacy.md, "Hyper-parameter tuning"): a
grid point drawn uniformly at random, a DP-SGD run with that point's
hyper-parameters and noise multiplier, and the count of correct validation
predictions plus Gaussian noise (sensitivity 1). Each point's curve is its
DP-SGD run's RDP plus the score's lambda / (2 sigma_s^2) (sequential
composition, conservative even though the validation examples are not
trained on). Q's curve, the one every theorem above is applied to, is the
pointwise maximum over the grid points of their curves: Q is a mixture with
data-independent weights, and even revealing which point was drawn costs at
most the worst point's divergence at each order. ``calibrate_points`` gives
each point its own noise multiplier (the smallest whose curve converts to
one common per-trial epsilon), so a short run does not pay for a long one's
noise; the total is always computed from the maximum of the points' curves,
which dominates each of them at every order by construction.

All functions here are pure; the tuner's secret randomness enters only
through ``trial_rng(secret)``.
"""

import dataclasses
import functools
import hashlib
import hmac
import math

import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from dp_zoo.accounting.checks import check_delta, check_positive, check_q, check_steps
from dp_zoo.accounting.events import dp_sgd_event

# dp-accounting's default RDP orders (all > 1).
ORDERS = tuple(float(a) for a in rdp_lib.DEFAULT_RDP_ORDERS)
KINDS = ("poisson", "negbin")
METHOD = "Papernot & Steinke 2022 (ICLR), random number of trials, release the best (arXiv 2110.03620)"


@dataclasses.dataclass(frozen=True)
class TrialDistribution:
    """The distribution of the number of trials K: ``poisson`` (mean) or ``negbin`` (eta, gamma).

    ``zero_truncated`` (Poisson only): K is Poisson(mean) conditioned on
    K >= 1, which is what ``parse`` gives and ``dp_zoo.tune`` runs; records
    written before it existed ran plain Poisson (``from_dict`` reads them so).
    """

    kind: str
    mean: float = None
    eta: float = None
    gamma: float = None
    zero_truncated: bool = False

    def __post_init__(self):
        if self.kind == "poisson":
            if self.mean is None or not math.isfinite(self.mean) or self.mean < 1:
                raise ValueError(f"poisson trials need a mean >= 1, got {self.mean!r}; e.g. --trials poisson:3.")
        elif self.kind == "negbin":
            if self.eta is None or not math.isfinite(self.eta) or self.eta <= -1:
                raise ValueError(f"negbin trials need eta > -1, got {self.eta!r}; e.g. --trials negbin:1,0.3.")
            if self.gamma is None or not 0 < self.gamma < 1:
                raise ValueError(f"negbin trials need 0 < gamma < 1, got {self.gamma!r}; e.g. --trials negbin:1,0.3.")
            if self.zero_truncated:
                raise ValueError("the negative binomial D_{eta,gamma} has no zero to truncate (K >= 1 already).")
        else:
            raise ValueError(f"unknown trial distribution {self.kind!r}; use one of {KINDS}.")

    @classmethod
    def parse(cls, spec):
        """``"poisson:MEAN"`` (zero-truncated) or ``"negbin:ETA,GAMMA"`` (ValueError naming the fix otherwise)."""
        kind, _, args = str(spec).partition(":")
        try:
            values = [float(v) for v in args.split(",")] if args else []
        except ValueError:
            values = None
        if kind == "poisson" and values is not None and len(values) == 1:
            return cls("poisson", mean=values[0], zero_truncated=True)
        if kind == "negbin" and values is not None and len(values) == 2:
            return cls("negbin", eta=values[0], gamma=values[1])
        raise ValueError(f"bad trial distribution {spec!r}: use poisson:MEAN (e.g. poisson:3) "
                         "or negbin:ETA,GAMMA (e.g. negbin:1,0.3).")

    @classmethod
    def from_dict(cls, d):
        """The distribution a card's ``privacy.tuning.trial_distribution`` names."""
        if d.get("kind") == "poisson":
            return cls("poisson", mean=d["mean"], zero_truncated=bool(d.get("zero_truncated", False)))
        return cls(d.get("kind"), eta=d.get("eta"), gamma=d.get("gamma"))

    def prob_zero(self):
        """P[K = 0] (0 for the truncated distributions)."""
        return math.exp(-self.mean) if self.kind == "poisson" and not self.zero_truncated else 0.0

    def expected_trials(self):
        """E[K] (public: it depends on the distribution only, never on the draw)."""
        if self.kind == "poisson":
            return float(self.mean) / (-math.expm1(-self.mean) if self.zero_truncated else 1.0)
        g, eta = self.gamma, self.eta
        if eta == 0:
            return (1 / g - 1) / math.log(1 / g)
        return eta * (1 - g) / (g * (1 - g ** eta))

    def describe(self):
        """The distribution in words (for the console and the card)."""
        if self.kind == "poisson":
            return f"Poisson(mean {self.mean:g})" + (" conditioned on K >= 1" if self.zero_truncated else "")
        return f"truncated negative binomial (eta {self.eta:g}, gamma {self.gamma:g})"

    def to_dict(self):
        d = {"kind": self.kind, "expected_trials": self.expected_trials()}
        if self.kind == "poisson":
            d.update(mean=self.mean, zero_truncated=self.zero_truncated)
        else:
            d.update(eta=self.eta, gamma=self.gamma)
        return d


# -- the single trial ------------------------------------------------------------


def dp_sgd_rdp(noise_multiplier, sampling_probability, steps, orders=ORDERS):
    """Per-order RDP of one DP-SGD run (``RdpAccountant``, add-or-remove-one), as a numpy array.

    An order where dp-accounting's series does not converge is +inf there
    (dp-accounting excludes it), which every bound below treats as no bound.
    """
    check_positive("noise_multiplier", noise_multiplier, "use e.g. noise_multiplier=1.0.")
    check_q(sampling_probability)
    check_steps(steps)
    return np.array(_dp_sgd_rdp(float(noise_multiplier), float(sampling_probability), int(steps),
                                tuple(float(a) for a in orders)))


@functools.lru_cache(maxsize=1024)
def _dp_sgd_rdp(noise_multiplier, sampling_probability, steps, orders):
    # Cached: calibration asks for the same runs many times.
    acc = rdp_lib.RdpAccountant(list(orders))
    acc.compose(dp_sgd_event(noise_multiplier, sampling_probability, steps))
    return tuple(float(r) for r in acc.rdp)


def gaussian_rdp(noise_multiplier, orders=ORDERS):
    """Per-order RDP of the Gaussian mechanism with sensitivity 1 and std ``noise_multiplier``."""
    check_positive("score noise", noise_multiplier, "use e.g. --score-noise 10.")
    acc = rdp_lib.RdpAccountant(list(orders))
    acc.compose(dp_event.GaussianDpEvent(noise_multiplier))
    return np.asarray(acc.rdp, dtype=np.float64)


def trial_rdp(runs, score_noise, orders=ORDERS):
    """Per-order RDP of one trial: the worst grid point's DP-SGD run plus the noisy score.

    Args:
      runs: ``((sigma, q, steps), ...)``, one per grid point.
      score_noise: std of the Gaussian noise on the count of correct
        validation predictions (sensitivity 1).
    """
    if not runs:
        raise ValueError("trial_rdp needs at least one grid point.")
    worst = np.max([dp_sgd_rdp(s, q, n, orders) for s, q, n in runs], axis=0)
    return worst + gaussian_rdp(score_noise, orders)


# -- the theorems ----------------------------------------------------------------


def _monotone(rdp):
    """min over orders >= each order (Renyi divergence is non-decreasing in the order)."""
    return np.minimum.accumulate(np.asarray(rdp, dtype=np.float64)[::-1])[::-1]


def poisson_rdp(orders, rdp, mean):
    """Theorem 6: the tuner's RDP at each order for K ~ Poisson(``mean``), from one trial's ``rdp``."""
    orders, rdp = np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64)
    _check_curve(orders, rdp)
    TrialDistribution("poisson", mean=mean)
    out = np.empty_like(rdp)
    for i, lam in enumerate(orders):
        eps_hat = math.log1p(1 / (lam - 1))  # e^eps_hat = 1 + 1/(lambda-1): the condition, with equality
        delta_hat, _ = rdp_lib.compute_delta(orders, rdp, eps_hat)
        out[i] = rdp[i] + mean * delta_hat + math.log(mean) / (lam - 1)
    return _monotone(out)


def negbin_rdp(orders, rdp, eta, gamma):
    """Theorem 2: the tuner's RDP at each order for K ~ D_{eta,gamma}, from one trial's ``rdp``."""
    orders, rdp = np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64)
    _check_curve(orders, rdp)
    dist = TrialDistribution("negbin", eta=eta, gamma=gamma)
    log_inv_gamma = -math.log(gamma)
    # The lambda_hat terms do not depend on lambda: minimise them once.
    hat = (1 + eta) * ((1 - 1 / orders) * rdp + log_inv_gamma / orders)
    out = rdp + hat.min() + math.log(dist.expected_trials()) / (orders - 1)
    return _monotone(out)


def zero_truncated_rdp(orders, rdp, p0):
    """The RDP of a mechanism conditioned on not outputting "bottom", from its ``rdp``, when
    "bottom" has probability ``p0`` on every data set (the Poisson tuner's K = 0).

    With P, Q the untruncated output distributions, sum_x P^lambda Q^(1-lambda)
    = e^((lambda-1) eps) and "bottom" contributes p0^lambda p0^(1-lambda) = p0
    to it; conditioning divides both by 1 - p0. Computed in logs:
    eps + (log1p(-p0 e^-((lambda-1) eps)) - log1p(-p0)) / (lambda - 1).
    """
    orders, rdp = np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64)
    _check_curve(orders, rdp)
    if not 0 <= p0 < 1:
        raise ValueError(f"p0 must be in [0, 1), got {p0!r}.")
    a = (orders - 1) * np.maximum(rdp, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        out = rdp + (np.log1p(-p0 * np.exp(-a)) - math.log1p(-p0)) / (orders - 1)
    return _monotone(np.where(np.isfinite(rdp), out, np.inf))


def tuned_rdp(orders, rdp, dist):
    """The tuner's per-order RDP for ``dist`` (a ``TrialDistribution``) from one trial's ``rdp``."""
    if dist.kind == "poisson":
        out = poisson_rdp(orders, rdp, dist.mean)
        return zero_truncated_rdp(orders, out, math.exp(-dist.mean)) if dist.zero_truncated else out
    return negbin_rdp(orders, rdp, dist.eta, dist.gamma)


def epsilon_from_rdp(orders, rdp, delta):
    """(epsilon, order): dp-accounting's RDP -> (eps, delta) conversion, minimised over orders."""
    check_delta(delta)
    eps, order = rdp_lib.compute_epsilon(list(orders), list(rdp), delta)
    return float(eps), float(order)


def _check_curve(orders, rdp):
    if orders.shape != rdp.shape or orders.ndim != 1 or not len(orders):
        raise ValueError("orders and rdp must be 1-D arrays of the same, non-zero length.")
    if np.any(orders <= 1):
        raise ValueError("the tuning theorems hold for orders > 1.")


# -- what the tuner publishes ------------------------------------------------------


def trial_epsilon(runs, score_noise, delta, orders=ORDERS):
    """Epsilon of one trial alone (what a single run with its score would claim)."""
    return epsilon_from_rdp(orders, trial_rdp(runs, score_noise, orders), delta)[0]


def total_epsilon(runs, score_noise, dist, delta, orders=ORDERS):
    """Epsilon of the whole tuning (``dist`` trials, best released), (eps, delta) with ``delta``."""
    rdp = trial_rdp(runs, score_noise, orders)
    return epsilon_from_rdp(orders, tuned_rdp(orders, rdp, dist), delta)[0]


def calibrate(target_epsilon, runs_for_sigma, score_noise, dist, delta, *, lo=0.3, hi=4.0, tol=1e-4):
    """The smallest per-trial noise multiplier whose TOTAL epsilon is <= ``target_epsilon``.

    Args:
      runs_for_sigma: ``sigma -> ((sigma, q, steps), ...)``, the grid's DP-SGD
        runs at that noise multiplier.
      lo, hi: the initial bracket (``hi`` is doubled until it meets the target).
      tol: bisection stops when the bracket is narrower; the returned sigma
        is the bracket's upper end, whose total epsilon meets the target.

    The total epsilon is non-increasing in sigma (each run's RDP is, and both
    theorems and the conversion are monotone in the trial's RDP), so
    bisection finds the boundary.
    """
    check_positive("target_epsilon", target_epsilon, "pass the total budget, e.g. --epsilon 8.")

    def total(s):
        return total_epsilon(runs_for_sigma(s), score_noise, dist, delta)

    # With no training at all (sigma -> infinity) the score and the number
    # of trials still spend this much: no sigma can go below it.
    floor = epsilon_from_rdp(ORDERS, tuned_rdp(ORDERS, gaussian_rdp(score_noise), dist), delta)[0]
    if floor >= target_epsilon:
        raise ValueError(f"the score noise and the number of trials alone spend epsilon {floor:.4f} >= "
                         f"the total {target_epsilon:g}: no noise multiplier meets it. Raise --score-noise "
                         "or the target, or lower the mean number of trials.")
    for _ in range(16):
        if total(hi) <= target_epsilon:
            break
        lo, hi = hi, hi * 2
    else:
        raise ValueError(f"no noise multiplier up to {hi:g} meets total epsilon {target_epsilon:g}: "
                         "the score noise or the number of trials alone spends more. Raise --score-noise "
                         "or the target, or lower the mean number of trials.")
    if total(lo) <= target_epsilon:
        raise ValueError(f"total epsilon {target_epsilon:g} is met already at sigma={lo:g}; dp_zoo does not "
                         "calibrate below it. Pass a smaller target.")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if total(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


# -- the secret draws -------------------------------------------------------------


def trial_rng(secret, label):
    """A numpy Generator keyed by HMAC-SHA256(``secret``, ``label``): the tuner's secret coins.

    ``secret`` comes from OS entropy (``secrets.token_bytes``) and is never
    published; no public seed enters here.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
        raise ValueError("the tuning secret must be at least 16 bytes from secrets.token_bytes.")
    key = hmac.new(bytes(secret), label.encode(), hashlib.sha256).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(key, "big")))


def draw_trials(dist, rng):
    """K, the number of trials, drawn from ``dist`` with ``rng`` (use ``trial_rng(secret, "trials")``)."""
    if dist.kind == "poisson":
        k = int(rng.poisson(dist.mean))
        while dist.zero_truncated and k == 0:  # conditioning on K >= 1 by rejection: exact
            k = int(rng.poisson(dist.mean))
        return k
    # Inverse CDF from the pmf's recursion P[k+1]/P[k] = (1-gamma)(k+eta)/(k+1),
    # P[1] = (1-gamma) eta / (gamma^-eta - 1) (-> (1-gamma)/log(1/gamma) at eta = 0).
    g, eta = dist.gamma, dist.eta
    log_inv = -math.log(g)
    p = (1 - g) * (eta / math.expm1(eta * log_inv) if eta != 0 else 1 / log_inv)
    u, k, cum = rng.random(), 1, p
    while cum < u and p > 0:
        p *= (1 - g) * (k + eta) / (k + 1)
        k += 1
        cum += p
    return k
