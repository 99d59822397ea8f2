"""The training loop: noise once per logical step, resume, budget guard, baseline."""

import json
import os

import numpy as np
import pytest

import dp_zoo
from dp_zoo import accounting
from dp_zoo import data
from dp_zoo.engine import trainer as engine
from dp_zoo.recipes import config as C

DIGITS = C.DataConfig()


@pytest.fixture(scope="module")
def train_set():
    return data.load_dataset(DIGITS, "train")


def cfg(**kw):
    base = dict(model="wrn_test", batch_size=64, physical_batch_size=32, steps=3, seed=3,
                deterministic=True, checkpoint_every=1,
                dp=C.DPConfig(noise_multiplier=1.0, l2_clip=1.0, delta=1e-5),
                ema=C.EMAConfig(decay=0.9), optim=C.OptimConfig(learning_rate=0.5))
    base.update(kw)
    return C.TrainConfig(**base)


def trainer(c, ds, **kw):
    import keras

    keras.utils.set_random_seed(0)
    m = dp_zoo.create_model(c.model, num_classes=10)
    return engine.Trainer(m, c, ds, progress=False, **kw)


def weights(t):
    return [v.numpy().copy() for v in t.model.trainable_variables]


def test_noise_added_once_per_logical_step_independent_of_micro_batching(train_set):
    a = trainer(cfg(physical_batch_size=8, steps=2), train_set)
    b = trainer(cfg(physical_batch_size=128, steps=2), train_set)
    a.fit(), b.fit()
    for x, y in zip(weights(a), weights(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_update_noise_std_is_sigma_c_over_b(train_set):
    sigma, c, b, lr = 50.0, 1.0, 64, 1.0
    t = trainer(cfg(steps=1, dp=C.DPConfig(noise_multiplier=sigma, l2_clip=c),
                    optim=C.OptimConfig(learning_rate=lr), ema=C.EMAConfig(decay=None)), train_set)
    before = np.concatenate([w.ravel() for w in weights(t)])
    t.fit()
    after = np.concatenate([w.ravel() for w in weights(t)])
    # The clipped mean has norm <= C/B-ish; with sigma=50 the noise dominates.
    std = np.std(after - before)
    assert abs(std - lr * sigma * c / b) / (lr * sigma * c / b) < 0.05


def test_add_noise_false_draws_no_noise_and_the_record_says_not_private(train_set):
    sigma, c, b, lr = 50.0, 1.0, 64, 1.0
    t = trainer(cfg(steps=1, deterministic=False, dp=C.DPConfig(noise_multiplier=sigma, l2_clip=c),
                    optim=C.OptimConfig(learning_rate=lr), ema=C.EMAConfig(decay=None)), train_set,
                add_noise=False)
    assert t.noise_multiplier == 0.0 and t.ledger.noise_multiplier == sigma
    before = np.concatenate([w.ravel() for w in weights(t)])
    privacy = t.fit()["privacy"]
    after = np.concatenate([w.ravel() for w in weights(t)])
    # The clipped mean alone moves each weight by far less than the noise std sigma*C/B would.
    assert np.std(after - before) < 0.05 * lr * sigma * c / b
    assert privacy["private"] is False and privacy["epsilon"] is None
    assert privacy["not_private"]["reason"] == "noise disabled" and privacy["nominal_epsilon"]["rdp"] > 0


def test_resume_equals_uninterrupted_run(train_set, tmp_path):
    full = trainer(cfg(steps=4), train_set, run_dir=str(tmp_path / "full"))
    rec_full = full.fit()
    d = str(tmp_path / "crashed")
    first = trainer(cfg(steps=4), train_set, run_dir=d)
    first.total_steps = 2  # stops after step 2, as a crash would
    first.fit()
    resumed = trainer(cfg(steps=4), train_set, run_dir=d)
    rec = resumed.fit()
    assert rec["privacy"]["steps"] == rec_full["privacy"]["steps"] == 4
    assert rec["privacy"]["nominal_epsilon"] == rec_full["privacy"]["nominal_epsilon"]
    for x, y in zip(weights(resumed), weights(full)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_corrupt_newest_checkpoint_falls_back_and_all_corrupt_refuses(train_set, tmp_path):
    d = str(tmp_path / "run")
    t = trainer(cfg(steps=3), train_set, run_dir=d)
    t.fit()
    ck = sorted(f for f in os.listdir(os.path.join(d, "checkpoints")) if f.endswith(".npz"))
    with open(os.path.join(d, "checkpoints", ck[-1]), "r+b") as f:
        f.truncate(100)
    t2 = trainer(cfg(steps=3), train_set, run_dir=d)
    assert t2.restore() == 2  # previous good checkpoint
    with open(os.path.join(d, "checkpoints", ck[0]), "r+b") as f:
        f.truncate(100)
    t3 = trainer(cfg(steps=3), train_set, run_dir=d)
    with pytest.raises(engine.TrainingError, match="Refusing to restart"):
        t3.restore()


def test_a_checkpoint_of_an_older_version_resumes_and_another_config_refuses(train_set, tmp_path):
    """A checkpoint's config is compared as a TrainConfig: keys older versions wrote (num_classes) do not matter."""
    d = str(tmp_path / "run")
    t = trainer(cfg(steps=2), train_set, run_dir=d)
    t.fit()
    ckpt = os.path.join(d, "checkpoints")
    newest = sorted(f for f in os.listdir(ckpt) if f.endswith(".json"))[-1]
    with open(os.path.join(ckpt, newest)) as f:
        meta = json.load(f)
    meta["config"]["num_classes"] = None
    with open(os.path.join(ckpt, newest), "w") as f:
        json.dump(meta, f)
    assert trainer(cfg(steps=2), train_set, run_dir=d).restore() == 2
    with pytest.raises(engine.TrainingError, match="different configuration"):
        trainer(cfg(steps=2, seed=4), train_set, run_dir=d).restore()


def test_secure_noise_counts_redone_steps(train_set, tmp_path):
    d = str(tmp_path / "run")
    c = cfg(steps=3, deterministic=False, checkpoint_every=100)
    t = trainer(c, train_set, run_dir=d)
    t.total_steps = 2
    t.fit()  # saves a final checkpoint at step 2
    # Simulate a crash after step 2's checkpoint but with a journal saying 3
    # noisy steps were drawn.
    j = json.load(open(os.path.join(d, "privacy_journal.json")))
    j["ledger"]["steps"] = 3
    json.dump(j, open(os.path.join(d, "privacy_journal.json"), "w"))
    t2 = trainer(c, train_set, run_dir=d)
    t2.restore()
    assert t2.step == 2 and t2.ledger.steps == 3


def test_budget_guard_stops_at_target(train_set):
    # RDP: the guard is the same for both accountants, and PLD's search takes tens of seconds here.
    q = 64 / len(train_set)
    limit = accounting.calibrate_steps(target_epsilon=2.0, noise_multiplier=1.0, sampling_probability=q, delta=1e-5,
                                       accountant="rdp")
    assert 2 <= limit <= 20  # a short run, but several steps
    t = trainer(cfg(steps=limit + 5, deterministic=False,
                    dp=C.DPConfig(noise_multiplier=1.0, target_epsilon=2.0, delta=1e-5, accountant="rdp")), train_set)
    rec = t.fit()
    assert rec["privacy"]["steps"] == t.step == limit  # never a step the guard refuses
    assert rec["privacy"]["epsilon"] <= 2.0
    assert t.ledger.epsilon_after(1) > 2.0  # and it did not stop early


def test_ema_and_polyak_follow_the_parameter_trajectory(train_set):
    mu, start = 0.9, 1
    t = trainer(cfg(steps=3, ema=C.EMAConfig(decay=mu, polyak_start=start),
                    optim=C.OptimConfig(learning_rate=0.5, momentum=0.9)), train_set)
    traj = [weights(t)]
    for step in range(3):
        t.train_step(step)
        traj.append(weights(t))
    ema = traj[0]
    for step in range(3):
        m = min(mu, (1 + step) / (10 + step))  # DESIGN.md §4 warm-up
        ema = [m * e + (1 - m) * p for e, p in zip(ema, traj[step + 1])]
    polyak = [np.mean([traj[s + 1][i] for s in range(start, 3)], axis=0) for i in range(len(ema))]
    for got, want in zip(t.ema_vars, ema):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    for got, want in zip(t.polyak_vars, polyak):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # Evaluation and export can use any of the three parameter sets; the
    # live weights are left untouched.
    clone = t.model_for("ema")
    for v, want in zip(clone.trainable_variables, ema):
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-6)
    # Each evaluation is of its own parameter set: the accuracy and loss of a copy of the
    # model holding exactly those weights.
    import keras

    from dp_zoo.preprocessing import normalize

    x = normalize(train_set.images, train_set.mean, train_set.std)
    losses = set()
    for which, params in (("last", traj[-1]), ("ema", ema), ("polyak", polyak)):
        copy = keras.models.clone_model(t.model)
        for v, w in zip(copy.trainable_variables, params):
            v.assign(w)
        logits = copy(x, training=False).numpy()
        got = t.evaluate(train_set, which)
        # (batched differently: an argmax tie may fall the other way for at most one image)
        assert abs(got["accuracy"] - np.mean(np.argmax(logits, 1) == train_set.labels)) <= 1 / len(train_set), which
        want_loss = np.mean(keras.losses.sparse_categorical_crossentropy(train_set.labels, logits, from_logits=True))
        assert got["loss"] == pytest.approx(float(want_loss), rel=1e-5), which
        losses.add(got["loss"])
    assert len(losses) == 3
    for x, y in zip(weights(t), traj[-1]):
        np.testing.assert_array_equal(x, y)


def test_nonfinite_updates_are_skipped_but_counted_then_stop(train_set):
    """A non-finite noisy update (here: weight decay on a weight that is already infinite) is skipped.

    Non-finite per-example gradients are dropped before the sum
    (tests/privacy/test_nonfinite_rows.py), so only post-processing of the
    noisy update can be non-finite; its noise was drawn, so the step counts.
    """
    t = trainer(cfg(steps=20, optim=C.OptimConfig(learning_rate=0.5, weight_decay=1e-4)), train_set)
    first = t.model.trainable_variables[0]
    first.assign(first.numpy() + np.float32(np.inf))
    before = weights(t)
    with pytest.raises(engine.TrainingError, match="non-finite"):
        t.fit()
    assert t.ledger.steps == engine.MAX_CONSECUTIVE_NONFINITE == t.nonfinite_steps
    for x, y in zip(weights(t), before):
        np.testing.assert_array_equal(x, y)


def test_target_epsilon_calibrates_sigma(train_set):
    # RDP: a PLD calibration takes 30-50 s here (PLD calibration is tested in test_accounting.py).
    t = trainer(cfg(steps=5, deterministic=False, dp=C.DPConfig(target_epsilon=2.0, delta=1e-5, accountant="rdp")),
                train_set)
    rec = t.fit()
    assert rec["privacy"]["steps"] == 5 and rec["privacy"]["accountant"] == "rdp"
    assert 1.99 < rec["privacy"]["epsilon"] <= 2.0
    assert rec["privacy"]["epsilon"] == accounting.epsilon(
        noise_multiplier=rec["privacy"]["noise_multiplier"], sampling_probability=64 / len(train_set), steps=5,
        delta=1e-5, accountant="rdp")


def test_non_private_baseline_claims_no_epsilon(train_set):
    t = trainer(cfg(dp=C.DPConfig(enabled=False)), train_set)
    rec = t.fit()
    assert rec["privacy"]["private"] is False and rec["privacy"]["epsilon"] is None


@pytest.mark.slow
def test_digits_training_learns(train_set):
    test = data.load_dataset(DIGITS, "test")
    c = cfg(model="wrn_digits", steps=25, batch_size=256, physical_batch_size=128,
            dp=C.DPConfig(noise_multiplier=1.0), optim=C.OptimConfig(learning_rate=2.0),
            augmult=C.AugmultConfig(num_views=2, style="crop", pad=1))
    t = trainer(c, train_set, augment_fn=data.make_augment_fn(c.augmult))
    t.fit()
    assert t.evaluate(test, "last")["accuracy"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("bad,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=10**6), "batch_size"),
    (dict(physical_batch_size=0), "physical_batch_size"),
    (dict(dp=C.DPConfig(l2_clip=0.0, noise_multiplier=1.0)), "l2_clip"),
    (dict(dp=C.DPConfig()), "noise_multiplier or target_epsilon"),
    (dict(steps=None), "steps or epochs"),
])
def test_bad_config_is_a_clear_error(train_set, bad, match):
    with pytest.raises(ValueError, match=match):
        trainer(cfg(**bad), train_set)
