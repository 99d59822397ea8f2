"""Private hyper-parameter tuning's accounting (issue #20, dp_zoo/accounting/tuning.py).

The totals are recomputed from Papernot & Steinke's theorems written out here
with numpy (and checked against dp-accounting's own implementation of them),
on the Gaussian mechanism's RDP curve lambda / (2 sigma^2) and on DP-SGD's.
"""

import math

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from dp_zoo import accounting
from dp_zoo.accounting import tuning
from dp_zoo.tune import parse_grid

ORDERS = np.array([1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 128, 256])
SIGMA = 3.0
GAUSS = ORDERS / (2 * SIGMA ** 2)
DELTA = 1e-5
DISTS = ["poisson:1", "poisson:3", "poisson:10", "negbin:1,0.3", "negbin:0,0.1", "negbin:-0.5,0.2", "negbin:2,0.5"]


def _eps(orders, rdp, delta):
    """RDP -> (eps, delta), Canonne-Kamath-Steinke 2020 Prop. 12, written out."""
    best = np.inf
    for a, r in zip(orders, rdp):
        if delta ** 2 + math.expm1(-r) > 0:
            return 0.0
        if a > 1.01:
            best = min(best, r + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return max(best, 0.0)


def _delta(orders, rdp, eps):
    """The converse: delta at eps from an RDP curve (same proposition, plus the KL bound)."""
    logs = []
    for a, r in zip(orders, rdp):
        ld = 0.5 * math.log1p(-math.exp(-r))
        if a > 1.01:
            ld = min(ld, (a - 1) * (r - eps + math.log1p(-1 / a)) - math.log(a))
        logs.append(ld)
    return min(math.exp(min(logs)), 1.0)


def _theorem(orders, rdp, spec):
    kind, args = spec.split(":")
    vals = [float(v) for v in args.split(",")]
    out = []
    for lam, eps in zip(orders, rdp):
        if kind == "poisson":  # Theorem 6, eps_hat = log(1 + 1/(lam-1))
            mu = vals[0]
            out.append(eps + mu * _delta(orders, rdp, math.log(1 + 1 / (lam - 1))) + math.log(mu) / (lam - 1))
        else:  # Theorem 2, minimised over lambda_hat
            eta, g = vals
            ek = (1 / g - 1) / math.log(1 / g) if eta == 0 else eta * (1 - g) / (g * (1 - g ** eta))
            hat = min((1 + eta) * (1 - 1 / lh) * eh + (1 + eta) * math.log(1 / g) / lh for lh, eh in zip(orders, rdp))
            out.append(eps + hat + math.log(ek) / (lam - 1))
    # RDP is non-decreasing in the order: a higher order's bound holds at a lower one.
    return np.array([min(out[i:]) for i in range(len(out))])


@pytest.mark.parametrize("spec", DISTS)
def test_total_is_the_theorem_written_out(spec):
    dist = tuning.TrialDistribution.parse(spec)
    got = tuning.tuned_rdp(ORDERS, GAUSS, dist)
    want = _theorem(ORDERS, GAUSS, spec)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert tuning.epsilon_from_rdp(ORDERS, got, DELTA)[0] == pytest.approx(_eps(ORDERS, want, DELTA), rel=1e-12)


@pytest.mark.parametrize("spec", ["poisson:3", "negbin:1,0.3", "negbin:0,0.1", "negbin:2,0.5"])
def test_agrees_with_dp_accountings_repeat_and_select(spec):
    """Google's implementation of the same theorems (not monotonised for Poisson: we take that step)."""
    dist = tuning.TrialDistribution.parse(spec)
    shape = np.inf if dist.kind == "poisson" else dist.eta
    ref = rdp_lib._compute_rdp_repeat_and_select(list(ORDERS), list(GAUSS), dist.expected_trials(), shape)
    ref = np.minimum.accumulate(np.asarray(ref)[::-1])[::-1]
    # dp-accounting finds gamma from the mean numerically: agreement to 1e-9, not to the last bit.
    np.testing.assert_allclose(tuning.tuned_rdp(ORDERS, GAUSS, dist), ref, rtol=1e-9)


@pytest.mark.parametrize("spec", DISTS)
def test_published_total_is_never_below_one_run(spec):
    dist = tuning.TrialDistribution.parse(spec)
    runs = ((1.5, 0.1, 100), (1.5, 0.1, 50))
    one_run = accounting.epsilon(noise_multiplier=1.5, sampling_probability=0.1, steps=100, delta=DELTA,
                                 accountant="rdp")
    trial = tuning.trial_epsilon(runs, 10.0, DELTA)
    total = tuning.total_epsilon(runs, 10.0, dist, DELTA)
    assert one_run < trial < total


def test_total_grows_with_the_trials_and_shrinks_with_the_noise():
    runs = lambda s: ((s, 0.1, 100),)  # noqa: E731
    by_mean = [tuning.total_epsilon(runs(1.5), 10.0, tuning.TrialDistribution("poisson", mean=m), DELTA)
               for m in (1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(by_mean, by_mean[1:]))
    dist = tuning.TrialDistribution("poisson", mean=3)
    by_sigma = [tuning.total_epsilon(runs(s), 10.0, dist, DELTA) for s in (0.8, 1.0, 1.5, 2.0, 3.0)]
    assert all(a > b for a, b in zip(by_sigma, by_sigma[1:]))


@pytest.mark.parametrize("spec", ["poisson:3", "negbin:1,0.3"])
def test_calibrate_meets_the_total_and_no_smaller_sigma_does(spec):
    dist = tuning.TrialDistribution.parse(spec)
    runs = lambda s: ((s, 0.1, 100), (s, 0.1, 50))  # noqa: E731
    tol = 1e-3
    sigma = tuning.calibrate(4.0, runs, 10.0, dist, DELTA, tol=tol)
    assert tuning.total_epsilon(runs(sigma), 10.0, dist, DELTA) <= 4.0
    assert tuning.total_epsilon(runs(sigma - 2 * tol), 10.0, dist, DELTA) > 4.0


def test_calibrate_refuses_a_target_the_score_alone_exceeds():
    with pytest.raises(ValueError, match="score noise"):
        tuning.calibrate(0.05, lambda s: ((s, 0.1, 10),), 1.0, tuning.TrialDistribution("poisson", mean=3), DELTA)


@pytest.mark.parametrize("spec", ["poisson", "poisson:", "poisson:x", "poisson:0.5", "poisson:3,1", "negbin:1",
                                  "negbin:-1,0.3", "negbin:1,1", "negbin:1,0", "uniform:3", ""])
def test_bad_trial_specs_are_refused(spec):
    with pytest.raises(ValueError, match="poisson:MEAN|mean >= 1|eta > -1|0 < gamma < 1|unknown"):
        tuning.TrialDistribution.parse(spec)


@pytest.mark.parametrize("items,match", [
    ([], "no --grid"), (["lr"], "KEY=V1,V2"), (["momentum=1"], "KEY=V1,V2"), (["lr="], "distinct positive"),
    (["lr=a"], "float values"), (["steps=1.5"], "int values"), (["lr=1,1"], "distinct"), (["lr=-1"], "positive"),
    (["lr=1", "lr=2"], "twice"),
])
def test_bad_grids_are_refused(items, match):
    with pytest.raises(ValueError, match=match):
        parse_grid(items)


def test_grid_is_the_product_of_its_axes():
    assert parse_grid(["lr=0.5,1", "steps=60,120,240"]) == [
        {"lr": lr, "steps": s} for lr in (0.5, 1.0) for s in (60, 120, 240)]


def test_the_number_of_trials_comes_from_the_secret():
    dist = tuning.TrialDistribution("poisson", mean=3)
    secrets_ = [bytes([i]) * 32 for i in range(16)]
    counts = [tuning.draw_trials(dist, tuning.trial_rng(s, "trials")) for s in secrets_]
    assert len(set(counts)) > 1  # two secrets, two numbers of trials
    assert counts == [tuning.draw_trials(dist, tuning.trial_rng(s, "trials")) for s in secrets_]
    with pytest.raises(ValueError, match="16 bytes"):
        tuning.trial_rng(b"seed=0", "trials")


@pytest.mark.parametrize("spec", ["poisson:3", "negbin:1,0.3", "negbin:0,0.1", "negbin:-0.5,0.2", "negbin:2,0.5"])
def test_trials_follow_the_distribution_the_theorem_assumes(spec):
    dist = tuning.TrialDistribution.parse(spec)
    rng = tuning.trial_rng(b"k" * 32, "trials")
    draws = np.array([tuning.draw_trials(dist, rng) for _ in range(20000)])
    if dist.kind == "negbin":
        assert draws.min() >= 1  # truncated: never zero trials
        g, eta = dist.gamma, dist.eta
        p1 = (1 - g) * (eta / (g ** -eta - 1) if eta else 1 / math.log(1 / g))
        assert abs(np.mean(draws == 1) - p1) < 4 * math.sqrt(p1 * (1 - p1) / len(draws))
    assert abs(draws.mean() - dist.expected_trials()) < 4 * draws.std() / math.sqrt(len(draws))
