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
from dp_zoo.accounting import tuning, tuning_calibration
from dp_zoo.commands.tune import parse_grid

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
        if kind == "poisson":  # Theorem 6, eps_hat = log(1 + 1/(lam-1)), then conditioned on K >= 1
            mu = vals[0]
            out.append(eps + mu * _delta(orders, rdp, math.log(1 + 1 / (lam - 1))) + math.log(mu) / (lam - 1))
        else:  # Theorem 2, minimised over lambda_hat
            eta, g = vals
            ek = (1 / g - 1) / math.log(1 / g) if eta == 0 else eta * (1 - g) / (g * (1 - g ** eta))
            hat = min((1 + eta) * (1 - 1 / lh) * eh + (1 + eta) * math.log(1 / g) / lh for lh, eh in zip(orders, rdp))
            out.append(eps + hat + math.log(ek) / (lam - 1))
    # RDP is non-decreasing in the order: a higher order's bound holds at a lower one.
    out = [min(out[i:]) for i in range(len(out))]
    if kind == "poisson":  # "bottom" (K = 0, probability p0 on every data set) removed, renormalised
        p0 = math.exp(-vals[0])
        # log((e^((lam-1) e) - p0) / (1 - p0)) / (lam - 1), with e^((lam-1) e) factored out (no overflow)
        out = [e + math.log((1 - p0 * math.exp(-(lam - 1) * e)) / (1 - p0)) / (lam - 1) for lam, e in zip(orders, out)]
        out = [min(out[i:]) for i in range(len(out))]
    return np.array(out)


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
    if dist.kind == "poisson":  # dp-accounting has the plain Poisson theorem (K = 0 possible)
        dist = tuning.TrialDistribution("poisson", mean=dist.mean)
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
    dist = tuning.TrialDistribution.parse("poisson:3")
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


def test_zero_truncation_is_exact_on_discrete_distributions():
    """Issue #26 item 7: "K = 0, run again" conditions the Poisson tuner on K >= 1. For two output
    distributions with the same mass p0 on "bottom", the conditioned pair's Renyi divergence is
    zero_truncated_rdp of the unconditioned one's, at every order (computed here by brute force)."""
    rng = np.random.default_rng(0)
    orders = np.array([1.5, 2, 3, 5, 8, 16, 32])
    for mu in (1.0, 3.0, 10.0):
        p0 = math.exp(-mu)
        p, q = rng.dirichlet(np.ones(6)) * (1 - p0), rng.dirichlet(np.ones(6)) * (1 - p0)
        div = lambda a, b, lam: math.log(np.sum(a ** lam * b ** (1 - lam))) / (lam - 1)  # noqa: E731
        full = np.array([div(np.append(p, p0), np.append(q, p0), lam) for lam in orders])
        cond = np.array([div(p / (1 - p0), q / (1 - p0), lam) for lam in orders])
        # (the brute-force curves are non-decreasing, so the monotone step changes nothing)
        np.testing.assert_allclose(tuning.zero_truncated_rdp(orders, full, p0), cond, rtol=1e-10)
        assert np.all(cond >= full - 1e-12)  # rerunning until a model comes out costs more
        assert np.all(cond <= full + math.log(1 / (1 - p0)) / (orders - 1) + 1e-12)


def test_the_tuner_runs_the_zero_truncated_poisson_and_accounts_for_it():
    dist = tuning.TrialDistribution.parse("poisson:3")
    assert dist.zero_truncated and dist.prob_zero() == 0.0
    assert dist.expected_trials() == pytest.approx(3 / (1 - math.exp(-3)))
    plain = tuning.TrialDistribution("poisson", mean=3)
    assert plain.prob_zero() == pytest.approx(math.exp(-3))
    runs = ((1.5, 0.1, 100),)
    assert tuning.total_epsilon(runs, 10.0, dist, DELTA) > tuning.total_epsilon(runs, 10.0, plain, DELTA)
    # records written before it ran plain Poisson and still recompute as such
    assert tuning.TrialDistribution.from_dict({"kind": "poisson", "mean": 3}) == plain
    assert tuning.TrialDistribution.from_dict(dist.to_dict()) == dist
    with pytest.raises(ValueError, match="no zero to truncate"):
        tuning.TrialDistribution("negbin", eta=1, gamma=0.3, zero_truncated=True)


def test_the_number_of_trials_comes_from_the_secret():
    dist = tuning.TrialDistribution.parse("poisson:3")
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
    assert draws.min() >= 1  # both truncated: never zero trials
    if dist.kind == "poisson":
        mu = dist.mean
        p1 = mu * math.exp(-mu) / -math.expm1(-mu)
        assert abs(np.mean(draws == 1) - p1) < 4 * math.sqrt(p1 * (1 - p1) / len(draws))
    if dist.kind == "negbin":
        g, eta = dist.gamma, dist.eta
        p1 = (1 - g) * (eta / (g ** -eta - 1) if eta else 1 / math.log(1 / g))
        assert abs(np.mean(draws == 1) - p1) < 4 * math.sqrt(p1 * (1 - p1) / len(draws))
    assert abs(draws.mean() - dist.expected_trials()) < 4 * draws.std() / math.sqrt(len(draws))


# -- per-grid-point sigma (issue #30) --------------------------------------------------------

FAST = np.array([1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64])  # integer-heavy orders: quick curves


@pytest.mark.parametrize("spec", ["poisson:3", "negbin:1,0.3"])
def test_per_point_sigmas_share_one_budget_and_the_total_is_recomputed_from_them(spec):
    """Every point's curve (training + score) is below the curve the total was computed from, at
    every order; the total recomputes from the points' (sigma, q, steps); each point meets one
    per-trial epsilon, so the short run gets less noise than the long one."""
    dist = tuning.TrialDistribution.parse(spec)
    shapes = [(0.1, 50), (0.1, 200), (0.2, 100)]
    sig = tuning_calibration.calibrate_points(4.0, shapes, 10.0, dist, DELTA, orders=FAST)
    runs = tuple((sig[s], *s) for s in sorted(shapes))
    trial = tuning.trial_rdp(runs, 10.0, FAST)
    curves = tuning_calibration.point_curves(runs, 10.0, FAST)
    assert np.all(curves <= trial)  # at every order, every point
    np.testing.assert_array_equal(trial, curves.max(axis=0))
    total = tuning.total_epsilon(runs, 10.0, dist, DELTA, FAST)
    assert tuning.epsilon_from_rdp(FAST, tuning.tuned_rdp(FAST, trial, dist), DELTA)[0] == total
    assert 4.0 * (1 - 2e-3) <= total <= 4.0
    eps = tuning_calibration.per_point_epsilons(runs, 10.0, DELTA, FAST)
    assert max(eps) / min(eps) < 1 + 1e-3 and max(eps) <= tuning.trial_epsilon(runs, 10.0, DELTA, FAST)
    assert sig[(0.1, 50)] < sig[(0.1, 200)]
    # one shared sigma (the longest run's) would leave the short run more noise than it needs
    shared = tuning.calibrate(4.0, lambda s: tuple((s, *x) for x in sorted(shapes)), 10.0, dist, DELTA)
    assert sig[(0.1, 50)] < shared


def test_per_point_sigma_is_the_smallest_that_meets_the_budget():
    e = 2.0
    s = tuning_calibration.sigma_for_epsilon(e, 0.1, 100, 10.0, DELTA, rtol=1e-4, orders=FAST)
    assert tuning_calibration.point_epsilon(s, 0.1, 100, 10.0, DELTA, FAST) <= e
    assert tuning_calibration.point_epsilon(s * (1 - 1e-3), 0.1, 100, 10.0, DELTA, FAST) > e
    with pytest.raises(ValueError, match="score noise"):
        tuning_calibration.calibrate_points(0.05, [(0.1, 10)], 1.0, tuning.TrialDistribution.parse("poisson:3"),
                                            DELTA, orders=FAST)
