"""Accounting against published reference values (DESIGN.md §5) and basic laws."""

import math
import warnings

import pytest

from dp_zoo import accounting as acc


def rel(a, b):
    return abs(a - b) / abs(b)


# jax_privacy doctest reference values (PLD).
def test_reference_epsilon_pld():
    eps = acc.epsilon(noise_multiplier=3.0, sampling_probability=0.1, steps=512, delta=1e-6)
    assert rel(eps, 3.77) < 0.01


@pytest.mark.slow  # a PLD calibration: 25-50 s on 2 cores (RDP calibration and PLD epsilons are in the quick set)
def test_reference_calibrate_noise():
    sigma = acc.calibrate_noise(target_epsilon=1.0, sampling_probability=0.1, steps=512, delta=1e-6)
    assert rel(sigma, 9.66) < 0.01


def test_reference_calibrate_steps():
    steps = acc.calibrate_steps(target_epsilon=2.0, noise_multiplier=3.0, sampling_probability=0.1, delta=1e-6)
    assert abs(steps - 155) <= 1.55
    # The boundary is exact: one more step exceeds the budget.
    kw = dict(noise_multiplier=3.0, sampling_probability=0.1, delta=1e-6)
    assert acc.epsilon(steps=steps, **kw) <= 2.0 < acc.epsilon(steps=steps + 1, **kw)


@pytest.mark.parametrize(
    "n,b,sigma,steps,delta,eps_rdp,eps_pld",
    [
        # CIFAR-10 WRN-16-4, eps=1 (De et al. 2022).
        (50_000, 4096, 10.0, 875, 1e-5, 0.99, 0.90),
        # ImageNet NF-ResNet-50, eps=8.
        (1_271_167, 16384, 2.5, 71_589, 8e-7, 8.00, 7.51),
    ],
)
def test_paper_recipes_rdp_and_pld(n, b, sigma, steps, delta, eps_rdp, eps_pld):
    kw = dict(noise_multiplier=sigma, sampling_probability=b / n, steps=steps, delta=delta)
    rdp = acc.epsilon(accountant="rdp", **kw)
    pld = acc.epsilon(accountant="pld", **kw)
    assert rel(rdp, eps_rdp) < 0.005
    assert rel(pld, eps_pld) < 0.01
    assert pld < rdp


@pytest.mark.parametrize("sigma,q,steps", [(0.8, 0.01, 100), (1.5, 0.05, 300), (4.0, 0.2, 50)])
def test_rdp_is_never_tighter_than_pld(sigma, q, steps):
    kw = dict(noise_multiplier=sigma, sampling_probability=q, steps=steps, delta=1e-5)
    assert acc.epsilon(accountant="rdp", **kw) >= acc.epsilon(accountant="pld", **kw) - 1e-3


def test_monotone_in_sigma_steps_and_q():
    base = dict(noise_multiplier=1.5, sampling_probability=0.05, steps=200, delta=1e-5)
    e0 = acc.epsilon(**base)
    assert acc.epsilon(**{**base, "noise_multiplier": 2.0}) < e0
    assert acc.epsilon(**{**base, "steps": 400}) > e0
    assert acc.epsilon(**{**base, "sampling_probability": 0.1}) > e0


# PLD at one target only, in the slow set: one PLD calibration takes 30-50 s on 2 cores
# (test_reference_calibrate_noise calibrates with PLD in the quick set).
@pytest.mark.parametrize("accountant,target", [pytest.param("pld", 8.0, marks=pytest.mark.slow), ("rdp", 1.0),
                                               ("rdp", 8.0)])
def test_calibrate_then_recompute(accountant, target):
    q, steps, delta = 4096 / 50_000, 875, 1e-5
    sigma = acc.calibrate_noise(target_epsilon=target, sampling_probability=q, steps=steps, delta=delta, accountant=accountant)
    eps = acc.epsilon(noise_multiplier=sigma, sampling_probability=q, steps=steps, delta=delta, accountant=accountant)
    assert eps <= target
    assert rel(eps, target) < 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(noise_multiplier=0.0), "noise_multiplier"),
        (dict(noise_multiplier=-1.0), "noise_multiplier"),
        (dict(sampling_probability=0.0), "sampling_probability"),
        (dict(sampling_probability=1.5), "sampling_probability"),
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(delta=0.0), "delta"),
        (dict(delta=1.0), "delta"),
        (dict(accountant="moments"), "accountant"),
        (dict(sampling="shuffle"), "shuffle"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    base = dict(noise_multiplier=1.0, sampling_probability=0.1, steps=10, delta=1e-5)
    with pytest.raises(ValueError, match=match):
        acc.epsilon(**{**base, **kwargs})


def test_bad_target_epsilon():
    with pytest.raises(ValueError, match="target_epsilon"):
        acc.calibrate_noise(target_epsilon=0.0, sampling_probability=0.1, steps=10, delta=1e-5)
    with pytest.raises(ValueError, match="target_epsilon"):  # RDP: the same refusal, without PLD at sigma 0.2
        acc.calibrate_noise(target_epsilon=1e6, sampling_probability=0.1, steps=10, delta=1e-5, accountant="rdp")


def test_delta_at_least_one_over_n_warns():
    with pytest.warns(UserWarning, match="1/N"):
        acc.PrivacyLedger(1.0, 0.1, delta=1e-2, dataset_size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.PrivacyLedger(1.0, 0.1, delta=1e-5, dataset_size=1000)


def test_ledger_counts_and_guards_the_budget():
    q, sigma, delta = 0.1, 1.0, 1e-5
    limit = acc.calibrate_steps(target_epsilon=2.0, noise_multiplier=sigma, sampling_probability=q, delta=delta)
    ledger = acc.PrivacyLedger(sigma, q, delta, dataset_size=10_000, target_epsilon=2.0)
    for _ in range(limit):
        assert ledger.can_step()
        ledger.record_step()
    assert ledger.steps == limit
    assert ledger.epsilon() <= 2.0
    assert not ledger.can_step()
    with pytest.raises(acc.BudgetExceededError, match="target_epsilon=2"):
        ledger.record_step()
    assert ledger.steps == limit  # the refused step was not counted
    assert ledger.epsilon() == acc.epsilon(noise_multiplier=sigma, sampling_probability=q, steps=limit, delta=delta)


def test_ledger_round_trip_and_mismatch():
    ledger = acc.PrivacyLedger(1.2, 0.05, 1e-5, dataset_size=50_000, target_epsilon=4.0)
    ledger.record_step(7)
    back = acc.PrivacyLedger.from_dict(ledger.to_dict(), expect=acc.PrivacyLedger(1.2, 0.05, 1e-5, 50_000, 4.0))
    assert back.steps == 7 and back.epsilon() == ledger.epsilon()
    with pytest.raises(ValueError, match="noise_multiplier"):
        acc.PrivacyLedger.from_dict(ledger.to_dict(), expect=acc.PrivacyLedger(1.3, 0.05, 1e-5, 50_000, 4.0))


def test_summary_reports_both_accountants_and_scheme():
    ledger = acc.PrivacyLedger(1.0, 0.02, 1e-5, dataset_size=50_000, accountant="rdp")
    ledger.record_step(100)
    s = ledger.summary()
    assert s["epsilon"] == s["epsilon_rdp"] >= s["epsilon_pld"] > 0
    assert s["sampling"] == "poisson" and s["adjacency"] == "add_or_remove_one"
    assert s["steps"] == 100 and math.isclose(s["expected_batch_size"], 1000.0)


def test_non_private_ledger_never_reports_epsilon():
    ledger = acc.PrivacyLedger(None, 0.1, 1e-5, dataset_size=1000, private=False)
    ledger.record_step(5)
    s = ledger.summary()
    assert s["private"] is False and s["epsilon"] is None and s["epsilon_pld"] is None


# --- calibrate_steps at its edges (RDP: the same search, milliseconds per epsilon) ---------------

STEPS_KW = dict(noise_multiplier=2.0, sampling_probability=0.01, delta=1e-5, accountant="rdp")


def test_calibrate_steps_boundary_is_inclusive_and_exact():
    e80 = acc.epsilon(steps=80, **STEPS_KW)
    assert acc.calibrate_steps(target_epsilon=e80, **STEPS_KW) == 80  # epsilon == target is within budget
    assert acc.calibrate_steps(target_epsilon=e80 * (1 - 1e-9), **STEPS_KW) == 79
    assert acc.calibrate_steps(target_epsilon=acc.epsilon(steps=1, **STEPS_KW), **STEPS_KW) == 1
    assert acc.calibrate_steps(target_epsilon=acc.epsilon(steps=2, **STEPS_KW), **STEPS_KW) == 2


def test_calibrate_steps_is_zero_when_one_step_exceeds_the_budget():
    assert acc.calibrate_steps(target_epsilon=acc.epsilon(steps=1, **STEPS_KW) * 0.999, **STEPS_KW) == 0
    assert acc.calibrate_steps(target_epsilon=1e-3, **STEPS_KW) == 0


def test_calibrate_steps_stops_at_max_steps_for_a_budget_that_never_runs_out():
    assert acc.calibrate_steps(target_epsilon=1e6, max_steps=100, **STEPS_KW) == 100
    assert acc.calibrate_steps(target_epsilon=1e6, max_steps=64, **STEPS_KW) == 64


def test_calibrate_steps_never_exceeds_the_budget_below_max_steps():
    e80 = acc.epsilon(steps=80, **STEPS_KW)
    steps = acc.calibrate_steps(target_epsilon=e80, max_steps=100, **STEPS_KW)
    assert acc.epsilon(steps=steps, **STEPS_KW) <= e80
    assert steps == 80


def test_calibrate_steps_rdp_never_allows_more_than_pld():
    target = acc.epsilon(steps=80, **STEPS_KW)
    pld = acc.calibrate_steps(target_epsilon=target, **{**STEPS_KW, "accountant": "pld"})
    assert pld >= 80  # the tighter accountant allows at least as many steps
    kw = {**STEPS_KW, "accountant": "pld"}
    assert acc.epsilon(steps=pld, **kw) <= target < acc.epsilon(steps=pld + 1, **kw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_epsilon=0.0), "target_epsilon"), (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(noise_multiplier=0.0), "noise_multiplier"), (dict(sampling_probability=0.0), "sampling_probability"),
    (dict(sampling_probability=1.5), "sampling_probability"), (dict(delta=1.0), "delta"),
    (dict(accountant="moments"), "accountant"), (dict(sampling="shuffle"), "shuffle"),
])
def test_calibrate_steps_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        acc.calibrate_steps(**{"target_epsilon": 1.0, **STEPS_KW, **kwargs})
