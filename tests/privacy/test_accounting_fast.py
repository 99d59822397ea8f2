"""Accounting that cannot hang a run (issue #16, item 8).

- ``PrivacyLedger.epsilon_upper``: a cheap per-step epsilon that is never
  below the exact one and never above the exact epsilon at the next point of
  its grid.
- ``PrivacyLedger.can_step``: exact at the budget boundary, and O(1) per step
  once the boundary (or that the planned steps fit) is known.
- Below ``PLD_MIN_NOISE_MULTIPLIER`` the ledger accounts with RDP and says so
  in its summary; ``epsilon(accountant="pld")`` refuses in seconds instead of
  running for minutes and gigabytes.
- ``run_interruptibly``: a stop request is honoured within a poll interval
  even while the accountant is computing.

Every configuration here is chosen so that one exact PLD epsilon takes well
under a second; the whole file runs in well under a minute.
"""

import bisect
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dp_zoo import accounting as acc

# One exact PLD epsilon of this configuration takes ~0.2 s.
SIGMA, Q, DELTA, N = 2.0, 0.01, 1e-5, 10_000


def exact(steps, accountant="pld", sigma=SIGMA):
    return acc.epsilon(noise_multiplier=sigma, sampling_probability=Q, steps=steps,
                       delta=DELTA, accountant=accountant)


@pytest.fixture
def count_exact(monkeypatch):
    """Counts the ledger's calls of the exact accountant."""
    calls = []
    real = acc.epsilon

    def counting(**kw):
        calls.append(kw["steps"])
        return real(**kw)

    monkeypatch.setattr(acc.ledger, "epsilon", counting)  # where the ledger looks it up
    return calls


# ---------------------------------------------------------------------------
# epsilon_upper


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_epsilon_upper_brackets_the_exact_epsilon(accountant):
    planned = 300
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, accountant=accountant, planned_steps=planned)
    grid = ledger.curve_steps()
    assert grid[0] == 1 and grid[-1] == planned
    assert list(grid) == sorted(set(grid)) and 8 <= len(grid) <= 40
    # Grid points, points just past them (the loosest case) and others.
    probe = sorted({1, 2, 3, 5, 17, 99, 100, 101, 157, 250, 299, 300}
                   | {g + 1 for g in grid if g < planned})
    for n in probe:
        upper = ledger.epsilon_upper(n)
        nxt = grid[bisect.bisect_left(grid, n)]
        assert upper >= exact(n, accountant), n
        assert upper <= exact(nxt, accountant), n
    assert ledger.epsilon_upper(planned) == exact(planned, accountant)


def test_epsilon_upper_defaults_to_steps_spent_and_is_exact_beyond_the_grid():
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, planned_steps=50)
    assert ledger.epsilon_upper() == 0.0
    ledger.record_step(20)
    assert ledger.epsilon_upper() == ledger.epsilon_upper(20) >= ledger.epsilon()
    assert ledger.epsilon_upper(77) == exact(77)  # beyond planned_steps: exact
    ledger.record_step(57)
    assert ledger.epsilon_upper() == ledger.epsilon() == exact(77)
    # Without planned_steps there is no grid: exact.
    plain = acc.PrivacyLedger(SIGMA, Q, DELTA, N)
    plain.record_step(33)
    assert plain.epsilon_upper() == exact(33)
    # A non-private run has no epsilon.
    off = acc.PrivacyLedger(None, Q, DELTA, N, private=False, planned_steps=10)
    off.record_step(3)
    assert off.epsilon_upper() is None


def test_epsilon_upper_costs_one_exact_computation_per_grid_point(count_exact):
    planned = 400
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, planned_steps=planned)
    for _ in range(planned):
        ledger.record_step()
        ledger.epsilon_upper()
    # Each grid point at most once, nothing else.
    assert len(count_exact) <= len(ledger.curve_steps())
    assert set(count_exact) <= set(ledger.curve_steps())


def test_epsilon_stays_exact():
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, planned_steps=300)
    ledger.record_step(123)
    assert ledger.epsilon() == exact(123)
    assert ledger.epsilon_after(5) == exact(128)


# ---------------------------------------------------------------------------
# can_step


def test_can_step_agrees_with_exact_accounting_at_the_boundary():
    target = 0.3
    limit = acc.calibrate_steps(target_epsilon=target, noise_multiplier=SIGMA,
                                sampling_probability=Q, delta=DELTA)
    assert 50 < limit < 400
    assert exact(limit) <= target < exact(limit + 1)
    for planned in (None, 2 * limit, limit, limit + 1, limit // 2):
        ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, target_epsilon=target, planned_steps=planned)
        for spent in (0, limit // 3, limit - 3, limit - 1, limit, limit + 2):
            ledger.steps = spent
            for n in (1, 2, 3, 5):
                assert ledger.can_step(n) == (exact(spent + n) <= target), (planned, spent, n)


def test_ledger_stops_exactly_at_the_budget():
    target = 0.3
    limit = acc.calibrate_steps(target_epsilon=target, noise_multiplier=SIGMA,
                                sampling_probability=Q, delta=DELTA)
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, target_epsilon=target, planned_steps=3 * limit)
    while ledger.can_step():
        ledger.record_step()
    assert ledger.steps == limit
    with pytest.raises(acc.BudgetExceededError):
        ledger.record_step()


def test_can_step_is_constant_time_when_the_plan_fits(count_exact):
    planned = 300
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, target_epsilon=5.0, planned_steps=planned)
    for _ in range(planned):
        assert ledger.can_step()
        ledger.record_step()
    # One exact check that the plan fits, then none per step.
    assert count_exact == [planned]


def test_can_step_needs_few_exact_computations_past_the_boundary(count_exact):
    target = 0.3
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, target_epsilon=target, planned_steps=2000)
    while ledger.can_step():
        ledger.record_step()
    n_calls = len(count_exact)
    for _ in range(50):
        assert not ledger.can_step()
    # A bisection (~log2(planned) exact computations), then no more.
    assert n_calls <= 14 and len(count_exact) == n_calls


def test_can_step_without_a_plan_is_amortised(count_exact):
    ledger = acc.PrivacyLedger(SIGMA, Q, DELTA, N, target_epsilon=5.0)
    for _ in range(500):
        assert ledger.can_step()
        ledger.record_step()
    # Doubling probes: O(log steps) exact computations, not one per step.
    assert len(count_exact) <= 12


# ---------------------------------------------------------------------------
# Small sigma: RDP instead of a PLD that takes minutes and gigabytes.

_SMALL_SIGMA_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    sys.path.insert(0, {root!r})
    from dp_zoo import accounting as acc
    t0 = time.time()
    ledger = acc.PrivacyLedger(0.05, 0.01, 1e-5, 10_000)
    ledger.record_step(100)
    s = ledger.summary()
    out = dict(summary=s, eps=ledger.epsilon(),
               rdp=acc.epsilon(noise_multiplier=0.05, sampling_probability=0.01, steps=100,
                               delta=1e-5, accountant="rdp"))
    try:
        acc.epsilon(noise_multiplier=0.05, sampling_probability=0.01, steps=100, delta=1e-5)
        out["pld_error"] = None
    except ValueError as e:
        out["pld_error"] = str(e)
    out["seconds"] = time.time() - t0
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_small_sigma_falls_back_to_rdp_in_seconds():
    """Before: the PLD of sigma=0.05 ran for minutes (0.01: 13 min, 11 GB)."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        r = subprocess.run([sys.executable, "-c", _SMALL_SIGMA_SCRIPT.format(root=root)],
                           capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("accounting at sigma=0.05 took more than 20 s")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    s = out["summary"]
    assert s["accountant"] == "rdp" and s["accountant_requested"] == "pld"
    assert "PLD" in s["accountant_note"] and str(acc.PLD_MIN_NOISE_MULTIPLIER) in s["accountant_note"]
    assert s["epsilon"] == s["epsilon_rdp"] == out["eps"] == out["rdp"]
    assert s.get("epsilon_pld") is None
    assert out["pld_error"] and "rdp" in out["pld_error"] and "noise_multiplier" in out["pld_error"]


def test_fallback_is_recorded_and_keeps_the_identity():
    sigma = acc.PLD_MIN_NOISE_MULTIPLIER / 2
    ledger = acc.PrivacyLedger(sigma, Q, DELTA, N, target_epsilon=1e6, planned_steps=20)
    ledger.record_step(10)
    assert ledger.effective_accountant == "rdp"
    assert ledger.epsilon() == exact(10, "rdp", sigma)
    assert ledger.epsilon_upper() >= ledger.epsilon()
    assert ledger.can_step()
    s = ledger.summary()
    assert s["accountant"] == "rdp" and s["accountant_requested"] == "pld" and s["accountant_note"]
    # The model card's required keys are all there.
    from dp_zoo.cards.run_record import REQUIRED_PRIVACY

    assert not [k for k in REQUIRED_PRIVACY if k not in s and k != "l2_clip"]
    # The checkpoint identity is what was configured, so a resume matches.
    back = acc.PrivacyLedger.from_dict(ledger.to_dict(), expect=acc.PrivacyLedger(sigma, Q, DELTA, N, 1e6))
    assert back.steps == 10 and back.accountant == "pld" and back.effective_accountant == "rdp"
    # Asked for RDP, or at a sigma PLD handles: no fallback, no note.
    for led in (acc.PrivacyLedger(sigma, Q, DELTA, N, accountant="rdp"),
                acc.PrivacyLedger(SIGMA, Q, DELTA, N)):
        led.record_step(3)
        s = led.summary()
        assert s["accountant"] == led.accountant and "accountant_note" not in s
        assert s.get("accountant_requested", led.accountant) == led.accountant


def test_pld_refuses_small_sigma_quickly():
    t0 = time.time()
    with pytest.raises(ValueError, match="rdp"):
        acc.epsilon(noise_multiplier=acc.PLD_MIN_NOISE_MULTIPLIER * 0.99, sampling_probability=Q,
                    steps=10, delta=DELTA)
    assert time.time() - t0 < 1.0
    # At the threshold PLD is still used (computing it would take seconds).
    at = acc.PrivacyLedger(acc.PLD_MIN_NOISE_MULTIPLIER, Q, DELTA, N)
    assert at.effective_accountant == "pld" and at.accountant_note is None


# ---------------------------------------------------------------------------
# run_interruptibly


def test_run_interruptibly_returns_the_result():
    assert acc.run_interruptibly(lambda: exact(12), lambda: False, poll_s=0.05) == exact(12)


def test_run_interruptibly_stops_within_a_poll_of_the_request():
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(30)
        return 1.0

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(acc.AccountingInterrupted):
        acc.run_interruptibly(slow, stop.is_set, poll_s=0.1)
    elapsed = time.monotonic() - t0
    assert started.is_set() and 0.45 < elapsed < 1.5


@pytest.mark.slow
def test_run_interruptibly_stops_during_a_real_pld_computation():
    # An exact PLD epsilon that takes seconds (numpy FFTs in the worker).
    fn = lambda: acc.epsilon(noise_multiplier=0.5, sampling_probability=0.18, steps=119, delta=1e-5)
    t0 = time.monotonic()
    with pytest.raises(acc.AccountingInterrupted):
        acc.run_interruptibly(fn, lambda: time.monotonic() - t0 > 0.3, poll_s=0.1)
    assert time.monotonic() - t0 < 1.3


def test_run_interruptibly_propagates_exceptions():
    def boom():
        raise ZeroDivisionError("boom in the accountant")

    with pytest.raises(ZeroDivisionError, match="boom in the accountant"):
        acc.run_interruptibly(boom, lambda: False, poll_s=0.05)
    # A stop requested before the start still lets nothing run to completion.
    with pytest.raises(acc.AccountingInterrupted):
        acc.run_interruptibly(lambda: time.sleep(5), lambda: True, poll_s=0.05)
