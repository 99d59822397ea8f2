"""Empirical privacy audit (Steinke, Nasr, Jagielski 2023): the statistics, then two real runs.

The statistics are checked against an independent computation (scipy's
binomial tail, or exact integer sums without scipy) and by simulation of
randomized response, whose epsilon is known exactly. The two slow tests
train with the real engine: DP at eps=2 must not be "caught" above its
accountant epsilon, and the same configuration with the noise turned off
(clipping kept) must be caught clearly above eps=2.
"""

import dataclasses
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from dp_zoo import audit as A
from dp_zoo.commands import audit as audit_cli


# --- statistics --------------------------------------------------------------


def _tail_exact(r, v, eps):
    """P[Binomial(r, e^eps/(1+e^eps)) >= v], by exact rational sums (no scipy, no log-space)."""
    q = Fraction(1) / (1 + Fraction(math.exp(-eps)))
    return float(sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1)))


def _tail(r, v, eps):
    try:
        from scipy.stats import binom
    except ImportError:  # pragma: no cover - scipy is in the venv
        return _tail_exact(r, v, eps)
    return float(binom.sf(v - 1, r, 1.0 / (1.0 + math.exp(-eps))))


def _bound_direct(r, v, beta):
    """The delta=0 bound as the root of tail(eps) = beta, by a plain bisection on the tail."""
    if _tail(r, v, 0.0) > beta:
        return 0.0
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _tail(r, v, mid) <= beta else (lo, mid)
    return lo


@pytest.mark.parametrize("m,r,v", [(200, 100, 100), (200, 100, 90), (500, 200, 140), (50, 50, 31), (1000, 40, 38)])
def test_delta0_bound_matches_direct_binomial_tail(m, r, v):
    got = A.epsilon_lower_bound(m, r, v, delta=0.0, confidence=0.95)
    assert got == pytest.approx(_bound_direct(r, v, 0.05), abs=1e-4)
    # At the bound the tail is beta: the definition, checked on exact sums.
    if got > 0:
        assert _tail_exact(r, v, got) == pytest.approx(0.05, rel=1e-3)


def test_p_value_delta0_is_the_binomial_tail():
    for r, v, eps in [(100, 80, 1.0), (30, 30, 3.0), (10, 1, 0.2)]:
        assert A.p_value(200, r, v, eps, 0.0) == pytest.approx(_tail_exact(r, v, eps), rel=1e-9)


def test_delta_term_only_lowers_the_bound():
    for m, r, v in [(200, 100, 95), (2000, 1000, 700)]:
        b0 = A.epsilon_lower_bound(m, r, v, delta=0.0)
        bd = A.epsilon_lower_bound(m, r, v, delta=1e-5)
        big = A.epsilon_lower_bound(m, r, v, delta=1e-3)
        assert big <= bd <= b0 and bd > 0
        # p-value = tail + 2 m delta alpha: the delta term is visible directly.
        assert A.p_value(m, r, v, 1.0, 1e-3) > A.p_value(m, r, v, 1.0, 0.0)


def test_monotone_in_correct_guesses():
    bounds = [A.epsilon_lower_bound(300, 150, v, delta=1e-5) for v in range(60, 151, 5)]
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1] > bounds[len(bounds) // 2] > 0


def test_more_confidence_lower_bound():
    assert A.epsilon_lower_bound(200, 100, 95, confidence=0.99) < A.epsilon_lower_bound(200, 100, 95, confidence=0.9)


def test_all_correct_with_many_guesses_is_large_and_chance_is_zero():
    # All r right, delta=0: P[Bin(r, q) >= r] = q^r = beta, so eps = logit(beta^(1/r)) in closed form.
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        assert A.epsilon_lower_bound(2 * r, r, r) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    assert A.epsilon_lower_bound(2000, 1000, 1000, delta=1e-6) > 5.7
    assert A.epsilon_lower_bound(200, 100, 100, delta=1e-5) == pytest.approx(3.4875, abs=1e-3)
    assert A.epsilon_lower_bound(1000, 1000, 500, delta=1e-5) == 0.0
    assert A.epsilon_lower_bound(1000, 1000, 520, delta=1e-5) == 0.0  # within chance at 95%
    assert A.epsilon_lower_bound(100, 0, 0) == 0.0
    assert A.epsilon_lower_bound(100, 20, 0) == 0.0


def test_bound_is_valid_for_randomized_response():
    """Guesses right with prob e^eps0/(1+e^eps0): exactly eps0-DP. The bound may exceed eps0 <= 5% of the time."""
    eps0, m, trials = 1.0, 200, 300
    rng = np.random.default_rng(0)
    acc = math.exp(eps0) / (1 + math.exp(eps0))
    v = rng.binomial(m, acc, size=trials)
    over = sum(A.epsilon_lower_bound(m, m, int(x), delta=0.0) > eps0 for x in v)
    assert over / trials <= 0.09  # 5% plus sampling slack (sd ~1.3%)
    # ...and the audit is not vacuous: the median bound is a good part of eps0.
    assert np.median([A.epsilon_lower_bound(m, m, int(x)) for x in v[:31]]) > 0.4


@pytest.mark.parametrize("args,msg", [
    ((10, 11, 5), "v <= r <= m"), ((10, 5, 6), "v <= r <= m"), ((10, -1, 0), "non-negative"),
    ((10.5, 5, 5), "non-negative integer"),
])
def test_bad_counts(args, msg):
    with pytest.raises(ValueError, match=msg):
        A.epsilon_lower_bound(*args)


def test_bad_delta_and_confidence():
    with pytest.raises(ValueError, match="delta"):
        A.epsilon_lower_bound(10, 5, 5, delta=1.5)
    with pytest.raises(ValueError, match="confidence"):
        A.epsilon_lower_bound(10, 5, 5, confidence=1.0)


# --- canaries and guesses ------------------------------------------------------


def test_canaries_seeded_and_coins_fair():
    a = A.make_canaries(400, (8, 8, 1), 10, seed=3)
    b = A.make_canaries(400, (8, 8, 1), 10, seed=3)
    c = A.make_canaries(400, (8, 8, 1), 10, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])
    images, labels, inc = a
    assert images.dtype == np.uint8 and images.shape == (400, 8, 8, 1)
    assert set(np.unique(labels)) == set(range(10))
    assert 160 < inc.sum() < 240  # Binomial(400, 1/2): mean 200, sd 10


def test_guesses_and_counting():
    scores = np.array([0.9, -5.0, 0.1, -0.2, 3.0, -9.0])
    g = A.guesses_from_scores(scores, 2)
    np.testing.assert_array_equal(g, [1, -1, 0, 0, 1, -1])
    r, v = A.count_correct(g, np.array([True, False, True, True, False, True]))
    assert (r, v) == (4, 2)
    with pytest.raises(ValueError):
        A.guesses_from_scores(scores, 4)


# --- result format, card, CLI errors -------------------------------------------


def _result(noise_disabled=False, lb=0.0):
    from dp_zoo.recipes import config as C

    return A.AuditResult(
        epsilon_lower_bound=lb, confidence=0.95, m=200, r=100, v=52, delta=1e-5,
        accountant_epsilon=None if noise_disabled else 1.9999, config=C.TrainConfig(model="wrn_test").to_dict(),
        noise_disabled=noise_disabled, configured_epsilon=2.0, noise_multiplier=0.0 if noise_disabled else 5.6,
        recipe="audit_small", num_included=101, train_size=401, guesses_per_side=50, wall_time_s=1.0)


def test_result_dict_is_json_and_labels_non_private_runs():
    d = json.loads(json.dumps(_result().to_dict()))
    for k in ("epsilon_lower_bound", "confidence", "m", "r", "v", "delta", "accountant_epsilon", "config"):
        assert k in d
    assert d["private"] is True and "Steinke" in d["method"]
    nn = _result(noise_disabled=True, lb=3.5)
    assert nn.to_dict()["status"] == A.NOT_PRIVATE_BANNER and nn.to_dict()["accountant_epsilon"] is None
    text = nn.summary()
    assert text.splitlines()[0].startswith("*** noise disabled: NOT private")
    assert text.splitlines()[-1] == f"*** {A.NOT_PRIVATE_BANNER} ***"


def test_an_audit_of_a_reproducible_run_does_not_call_it_private():
    """audit_small runs with deterministic=True: sampling and noise follow the public seed, so by
    dp_zoo's own definition the run is NOT private, whatever the audit measures."""
    cfg = A.audit_small_config()
    assert cfg.deterministic
    res = dataclasses.replace(_result(), config=cfg.to_dict())
    d = res.to_dict()
    assert d["private"] is False and res.private is False and d["noise_disabled"] is False
    assert "NOT private" in d["status"] and "reproducible" in d["status"]
    assert not d["status"].startswith("private")
    assert "NOT private" in res.summary() and "nominal" in res.summary()
    # A run keyed by its secret is audited as private.
    secret = dataclasses.replace(_result(), config=cfg.replace(deterministic=False).to_dict())
    assert secret.private and secret.to_dict()["status"] == "private (audited DP-SGD run)"


def test_card_shows_audit_next_to_accountant_epsilon(tmp_path):
    from dp_zoo.cards.model_card import ModelCard
    from tests import _zoo_helpers as H

    record = H.run_record()
    record["audit"] = _result(lb=0.1234).to_dict()
    card = ModelCard.from_run_record("x", record)
    assert card.to_json()["audit"]["epsilon_lower_bound"] == 0.1234
    assert "epsilon lower bound | 0.1234" in card.to_markdown()


def test_attach_refuses_non_private_and_foreign_records(tmp_path):
    from tests import _zoo_helpers as H

    p = tmp_path / "run_record.json"
    p.write_text(json.dumps(H.run_record()))
    with pytest.raises(ValueError, match="NOT private"):
        A.attach_to_record(_result(noise_disabled=True), str(p))
    with pytest.raises(ValueError, match="not trained with the audited configuration"):
        A.attach_to_record(_result(), str(p))


@pytest.mark.parametrize("argv,msg", [
    (["--canaries", "1"], "--canaries must be >= 2"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--epsilon", "-1"], "--epsilon must be > 0"),
    (["--guess-fraction", "0.7"], "--guess-fraction"),
    (["--confidence", "1"], "--confidence"),
    (["--recipe", "wrn_digits_eps9"], "wrn_digits_eps"),
    (["--recipe", "wrn_digits_nonprivate"], "not private"),
    (["--no-noise", "--attach-to", "r.json"], "--attach-to"),
    (["--train-size", "0"], "train size"),
])
def test_cli_bad_flags_one_line_exit_2(argv, msg, capsys):
    assert audit_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dp_zoo.audit: error:") and msg in err and "\n" not in err


def test_cli_unknown_flag_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        audit_cli.main(["--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dp_zoo.audit: error:") and "--bogus" in err and "\n" not in err


# --- real audits (digits, tiny WRN, the real engine) ---------------------------


def test_noiseless_audit_uses_the_engines_add_noise_hook(monkeypatch):
    """The power check runs engine.Trainer itself (no subclass) with add_noise=False: every update has std 0."""
    import dataclasses

    from dp_zoo.engine import trainer as engine, step

    built, stds = [], []
    real_init, real_noisy = engine.Trainer.__init__, step.noisy_normalized_sum

    def init(self, *args, **kw):
        built.append((type(self), kw.get("add_noise")))
        real_init(self, *args, **kw)

    def noisy(grad_sum, **kw):  # called when the update is traced: sigma is a Python float there
        stds.append(kw["noise_multiplier"])
        return real_noisy(grad_sum, **kw)

    monkeypatch.setattr(engine.Trainer, "__init__", init)
    monkeypatch.setattr(step, "noisy_normalized_sum", noisy)
    cfg, n = A.resolve_config(A.AUDIT_SMALL, epsilon=2.0, steps=2)
    cfg = cfg.replace(dp=dataclasses.replace(cfg.dp, accountant="rdp"))
    res = A.run_audit(cfg, A.load_train(cfg, 100), num_canaries=8, noise=False)
    assert built == [(engine.Trainer, False)]
    assert stds and set(stds) == {0.0}
    assert res.noise_multiplier == 0.0 and not res.private


@pytest.mark.slow
def test_dp_run_lower_bound_below_accountant_epsilon():
    import dataclasses

    cfg, n = A.resolve_config(A.AUDIT_SMALL, epsilon=2.0)
    # RDP: sigma is calibrated in milliseconds (PLD: 30-50 s here); the audit does not depend on which.
    cfg = cfg.replace(dp=dataclasses.replace(cfg.dp, accountant="rdp"))
    res = A.run_audit(cfg, A.load_train(cfg, n), num_canaries=200, seed=0, recipe=A.AUDIT_SMALL)
    assert res.noise_multiplier > 1 and not res.noise_disabled
    assert res.reproducible and not res.private  # audit_small is deterministic: NOT private, an audit all the same
    assert res.accountant_epsilon == pytest.approx(2.0, abs=1e-3)
    assert res.r == 100
    assert res.epsilon_lower_bound <= res.accountant_epsilon


@pytest.mark.slow
def test_no_noise_engine_is_caught_above_configured_epsilon(tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert audit_cli.main(["--recipe", A.AUDIT_SMALL, "--epsilon", "2", "--canaries", "200", "--no-noise",
                   "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert A.NOT_PRIVATE_BANNER in captured.err and A.NOT_PRIVATE_BANNER in captured.out
    assert "accountant epsilon" not in captured.out
    d = json.loads(out.read_text())
    assert d["noise_disabled"] is True and d["private"] is False and d["accountant_epsilon"] is None
    assert d["noise_multiplier"] == 0.0 and d["config"]["dp"]["l2_clip"] == 1.0
    # Configured eps=2; a working audit of a noiseless engine proves much more.
    assert d["epsilon_lower_bound"] > 1.5 * d["configured_epsilon"]
