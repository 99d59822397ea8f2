"""The one-run audit's statistics (Steinke, Nasr, Jagielski 2023): pure math, no TensorFlow.

``p_value`` is the probability of at least v correct guesses out of r under
(epsilon, delta)-DP; ``epsilon_lower_bound`` the largest epsilon that this
p-value rejects at the given confidence.
"""

import math

import numpy as np


def _check_counts(m, r, v):
    for name, x in (("m", m), ("r", r), ("v", v)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {x!r}.")
    if not v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got m={m}, r={r}, v={v}.")


def _check_delta_conf(delta, confidence):
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 <= delta < 1):
        raise ValueError(f"delta must be in [0, 1), got {delta!r}.")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r} (e.g. 0.95).")


def _log_choose(n):
    """log C(n, k) for k = 0..n (lgamma keeps large n exact enough and finite)."""
    lg = np.array([math.lgamma(k + 1) for k in range(n + 1)])
    return lg[n] - lg - lg[::-1]


def _p_values(m, r, v, eps, delta):
    """The p-value (module docstring) for each eps in the 1-D array ``eps``."""
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if v == 0:
        return np.ones_like(eps)  # W >= 0 always: nothing can be rejected
    log_c = _log_choose(r)
    k = np.arange(r + 1)
    out = np.empty_like(eps)
    # Chunks keep the [len(eps), r + 1] matrix small for large r.
    chunk = max(1, 2_000_000 // (r + 1))
    for s in range(0, len(eps), chunk):
        e = eps[s:s + chunk, None]
        # log q and log(1 - q) for q = e^eps / (1 + e^eps), without overflow.
        log_q = -np.logaddexp(0.0, -e)
        log_1mq = log_q - e
        pmf = np.exp(log_c + k * log_q + (r - k) * log_1mq)
        tail = pmf[:, v:].sum(axis=1)
        if delta > 0:
            # window[i-1] = P[v - i <= B < v], i = 1..v
            window = np.cumsum(pmf[:, v - 1::-1], axis=1)
            alpha = np.max(window / np.arange(1, v + 1), axis=1)
            tail = tail + 2.0 * m * delta * alpha
        out[s:s + chunk] = np.minimum(tail, 1.0)
    return out


def p_value(m, r, v, epsilon, delta=0.0):
    """P-value of "the algorithm is (epsilon, delta)-DP" after v of r guesses were right.

    Args:
      m: number of canaries (each included with probability 1/2).
      r: number of guesses made (the others abstained).
      v: number of correct guesses.
      epsilon: the hypothesised epsilon (>= 0).
      delta: the hypothesised delta.

    Returns:
      An upper bound on P[W >= v] under the hypothesis (capped at 1).
    """
    _check_counts(m, r, v)
    _check_delta_conf(delta, 0.5)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}.")
    return float(_p_values(m, r, v, [epsilon], delta)[0])


def epsilon_lower_bound(m, r, v, *, delta=0.0, confidence=0.95, tol=1e-6):
    """Lower bound on epsilon that holds with probability >= ``confidence``.

    The smallest eps whose p-value exceeds beta = 1 - confidence. The
    p-value is not proven monotone in eps when delta > 0 (its delta term
    can shrink as eps grows), so the first crossing is found by a grid scan
    and then refined by bisection, never by a bisection over the whole
    range (which could land on a later crossing and overstate the bound).

    Args:
      m, r, v: canaries, guesses, correct guesses.
      delta: the delta the (eps, delta) statement is about (the run's).
      confidence: 1 - beta.
      tol: precision of the bisection (the result is rounded DOWN to it).

    Returns:
      float >= 0 (0 when not even eps = 0 can be rejected).
    """
    _check_counts(m, r, v)
    _check_delta_conf(delta, confidence)
    beta = 1.0 - confidence
    if _p_values(m, r, v, [0.0], delta)[0] > beta:
        return 0.0
    # Above eps_hi the binomial tail alone exceeds beta (it grows with eps),
    # so the first crossing lies in [0, eps_hi].
    hi = 1.0
    while _p_values(m, r, v, [hi], 0.0)[0] <= beta:
        hi *= 2.0
        if hi > 1e4:  # cannot happen for v <= r; a guard against a silent hang
            raise RuntimeError("epsilon_lower_bound: no crossing below 1e4")
    grid = np.linspace(0.0, hi, 4001)
    p = _p_values(m, r, v, grid, delta)
    j = int(np.argmax(p > beta))
    if p[j] <= beta:  # only possible if the tail bracket above was wrong
        raise RuntimeError("epsilon_lower_bound: bracket without crossing")
    lo, hi = float(grid[j - 1]), float(grid[j])
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _p_values(m, r, v, [mid], delta)[0] <= beta:
            lo = mid
        else:
            hi = mid
    return lo
