"""Quantile-adaptive clipping (issue #31; Andrew et al. 2021; ``dp_zoo.dp.adaptive_clip``).

What would be wrong with a wrong implementation, and the test that catches it:
- the noise split of the paper's Theorem 1 (the accountant charges sigma, the
  gradient draws sigma_grad, the count sigma_b), measured on the update;
- the count: centred, padding excluded, non-finite rows counted as clipped,
  noised from the step's secret noise seed;
- C tracking a known quantile of synthetic norms;
- C as checkpointed state: a resumed run equals an uninterrupted one bit for
  bit (the journal's replay rule relies on it);
- the engine, make_private, the CLI and the tuner take the mode, and the
  record states it.
"""

import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo import dp
from dp_zoo.dp import adaptive_clip
from dp_zoo.engine import resolve, step as step_lib


def test_the_gradient_noise_multiplier_is_theorem_1():
    sigma, sb = 1.5, 6.4
    g = adaptive_clip.gradient_noise_multiplier(sigma, sb)
    assert g == pytest.approx((sigma ** -2 - (2 * sb) ** -2) ** -0.5, rel=1e-12)
    # The pair, whitened, moves by sqrt(g^-2 + (2 sb)^-2) = 1 / sigma: one Gaussian of multiplier sigma.
    assert math.sqrt(g ** -2 + (2 * sb) ** -2) == pytest.approx(1 / sigma, rel=1e-12)
    assert g > sigma
    with pytest.raises(ValueError, match="must exceed sigma/2"):
        adaptive_clip.gradient_noise_multiplier(2.0, 1.0)
    assert adaptive_clip.gradient_noise_multiplier(0.0, 1.0) == 0.0


def test_the_plan_charges_sigma_and_draws_its_shares():
    plan = resolve.resolve_privacy(dataset_size=1000, batch_size=100, steps=50, target_epsilon=3.0, l2_clip=2.0,
                                   clipping="adaptive", accountant="rdp")
    flat = resolve.resolve_privacy(dataset_size=1000, batch_size=100, steps=50, target_epsilon=3.0, l2_clip=2.0,
                                   accountant="rdp")
    # The accountant's question is the flat run's: same sigma charged, so the same epsilon.
    assert plan.noise_multiplier == flat.noise_multiplier
    assert plan.clipping.count_noise == plan.update_count_noise == 5.0  # B / 20
    assert plan.update_noise_multiplier == adaptive_clip.gradient_noise_multiplier(plan.noise_multiplier, 5.0)
    noiseless = resolve.resolve_privacy(dataset_size=1000, batch_size=100, steps=50, noise_multiplier=1.0,
                                        l2_clip=2.0, clipping="adaptive", add_noise=False)
    assert (noiseless.update_noise_multiplier, noiseless.update_count_noise) == (0.0, 0.0)
    with pytest.raises(ValueError, match="must exceed sigma/2"):
        resolve.resolve_privacy(dataset_size=1000, batch_size=100, steps=50, noise_multiplier=4.0, l2_clip=1.0,
                                clipping="adaptive", count_noise=1.0)
    for kw, match in ((dict(target_quantile=1.0), "quantile must be in"), (dict(clip_learning_rate=0.0), "> 0"),
                      (dict(count_noise=-1.0), "count noise must be > 0")):
        with pytest.raises(ValueError, match=match):
            resolve.resolve_privacy(dataset_size=1000, batch_size=100, steps=5, noise_multiplier=1.0, l2_clip=1.0,
                                    clipping="adaptive", **kw)


def test_the_count_is_centred_without_padding_and_a_nonfinite_row_counts_as_clipped():
    norms = tf.constant([0.5, 1.0, 3.0, np.nan, 0.1])
    mask = tf.constant([1.0, 1.0, 1.0, 1.0, 0.0])
    # below C=1: rows 0, 1 (+1/2 each); above: row 2 and the NaN row (-1/2 each); row 4 is padding.
    assert float(adaptive_clip.centred_count(norms, 1.0, mask)) == 0.0
    assert float(adaptive_clip.centred_count(norms, 5.0, mask)) == 1.0


@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_c_tracks_a_known_quantile_of_synthetic_norms(quantile):
    """Lognormal norms (quantile q at exp(z_q)); B = 400, sigma_b = B / 20, C starting 100x too large."""
    rng = np.random.default_rng(0)
    b, steps = 400, 600
    true = math.exp(0.5 * math.sqrt(2) * _erfinv(2 * quantile - 1))
    c, tail = tf.constant(100.0 * true), []
    for t in range(steps):
        norms = tf.constant(rng.lognormal(0.0, 0.5, size=b), tf.float32)
        count = adaptive_clip.centred_count(norms, c, tf.ones([b]))
        frac = adaptive_clip.noisy_fraction(count, count_noise=b / 20, expected_batch_size=b,
                                            seed=tf.constant([7, t], tf.int64))
        c = adaptive_clip.next_clip(c, frac, target_quantile=quantile, learning_rate=0.2)
        if t >= steps - 200:
            tail.append(float(c))
    assert np.mean(tail) == pytest.approx(true, rel=0.1)


def _erfinv(y):
    # The normal quantile by bisection on math.erf (no scipy dependency for one number).
    lo, hi = -6.0, 6.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return lo


def _adaptive_step(sigma=2.0, count_noise=5.0, batch=10.0):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(500), keras.layers.Dense(400)])
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build(model.trainable_variables)
    plan = resolve.resolve_privacy(dataset_size=100, batch_size=batch, steps=3, noise_multiplier=sigma,
                                   l2_clip=3.0, clipping="adaptive", count_noise=count_noise)
    spec = step_lib.StepSpec.for_plan(plan)
    state = step_lib.make_clip_state(spec)
    fns = step_lib.build_step_functions(model, optimizer, spec, step_lib.no_averages(),
                                        strategy=tf.distribute.get_strategy(), views=step_lib.single_view,
                                        clip_state=state)
    return model, fns, state, plan


def _apply(model, fns, count, seed):
    before = [v.numpy().copy() for v in model.trainable_variables]
    zeros = [tf.zeros_like(v) for v in model.trainable_variables] + [tf.constant(float(count))]
    assert fns.apply(zeros, tf.constant(0, tf.int64), tf.constant(seed, tf.int64), tf.constant(False),
                     tf.constant(False))
    return np.concatenate([(b - v.numpy()).ravel() for b, v in zip(before, model.trainable_variables)])


def test_the_step_draws_sigma_grad_times_c_t_and_moves_c_by_the_noisy_count():
    model, fns, state, plan = _adaptive_step()
    state.assign(0.5)
    update = _apply(model, fns, 0.0, [5, 6])
    # SGD(1): the update is the noisy sum / B, std sigma_grad * C_t / B with C_t = 0.5 (not the initial 3).
    assert update.std() == pytest.approx(plan.update_noise_multiplier * 0.5 / 10.0, rel=0.02)
    # log(C_{t+1} / C_t) = -eta (b_t - gamma), b_t = (count + N(0, sb^2)) / B + 1/2: over many seeds its
    # mean is -eta (count / B + 1/2 - gamma) and its std eta sb / B.
    logs = []
    for s in range(300):
        state.assign(1.0)
        _apply(model, fns, 2.0, [s, 1])
        logs.append(math.log(float(state.numpy())))
    assert np.mean(logs) == pytest.approx(-0.2 * (2.0 / 10.0), abs=0.03)
    assert np.std(logs) == pytest.approx(0.2 * 5.0 / 10.0, rel=0.15)


def test_the_count_noise_comes_from_the_step_noise_seed():
    """Same (secret) noise seed: the same C; another seed: another C (not a fixed or public stream)."""
    model, fns, state, _ = _adaptive_step()
    after = {}
    for seed in ([1, 2], [1, 2], [3, 4]):
        state.assign(1.0)
        _apply(model, fns, 0.0, seed)
        after.setdefault(tuple(seed), []).append(float(state.numpy()))
    assert after[(1, 2)][0] == after[(1, 2)][1] != after[(3, 4)][0]


def test_bf16_keeps_the_count_and_c_t_in_float32():
    keras.utils.set_random_seed(0)
    model = dp_zoo.create_model("wrn_test", num_classes=5, input_shape=(8, 8, 1))
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    plan = resolve.resolve_privacy(dataset_size=100, batch_size=8, steps=3, noise_multiplier=1.0, l2_clip=0.5,
                                   clipping="adaptive", count_noise=2.0)
    spec = step_lib.StepSpec.for_plan(plan, precision="bf16")
    state = step_lib.make_clip_state(spec)
    fns = step_lib.build_step_functions(model, optimizer, spec, step_lib.no_averages(),
                                        strategy=tf.distribute.get_strategy(), views=step_lib.single_view,
                                        clip_state=state)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(8, 8, 8, 1)).astype(np.float32))
    grads, norms = fns.local_sum(x, tf.constant(rng.integers(0, 5, 8).astype(np.int32)), tf.ones([8]),
                                 tf.zeros([2], tf.int64))
    count = grads[-1]
    assert count.dtype == tf.float32 and float(count) == float(np.sum(norms.numpy() <= 0.5)) - 4.0
    assert fns.apply(grads, tf.constant(0, tf.int64), tf.constant([1, 2], tf.int64), tf.constant(False),
                     tf.constant(False))
    assert state.dtype == tf.float32 and float(state.numpy()) != 0.5


def test_the_local_sum_clips_at_c_t_and_appends_the_count():
    model, fns, state, _ = _adaptive_step()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(6, 64)).astype(np.float32))
    y = tf.constant(rng.integers(0, 400, 6).astype(np.int32))
    mask = tf.constant([1, 1, 1, 1, 1, 0], tf.float32)
    state.assign(0.7)
    got = fns.local_sum(x, y, mask, tf.zeros([2], tf.int64))
    grads, norms = got
    want, want_norms = dp.clipped_grad_sum(model, x[:, None], y, l2_clip=0.7, mask=mask)
    assert len(grads) == len(model.trainable_variables) + 1
    for g, w in zip(grads[:-1], want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
    below = (want_norms.numpy()[:5] <= 0.7).sum()
    assert float(grads[-1]) == below - 2.5


def test_make_private_adapts_c_across_fits():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    private = dp_zoo.make_private(inner, l2_clip=50.0, noise_multiplier=1.0, dataset_size=512, batch_size=64,
                                  clipping="adaptive", target_quantile=0.5, clip_learning_rate=0.3)
    private.compile(optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    private.fit(x, y, steps=10, verbose=0)
    first = private.current_l2_clip
    private.fit(x, y, steps=10, verbose=0)
    # Every example's norm is far below 50: the count says "all unclipped" and C shrinks, fit after fit.
    assert private.current_l2_clip < first < 50.0 * math.exp(-0.3 * 0.3 * 10)
    assert private.ledger.noise_multiplier == 1.0 and private.ledger.steps == 20


@pytest.fixture(scope="module")
def digits_train():
    from dp_zoo import data
    from dp_zoo.recipes import config as C

    return data.load_dataset(C.DataConfig(), "train")


def _adaptive_config(**kw):
    from dp_zoo.recipes import config as C
    from tests.privacy.conftest import tiny_config

    return tiny_config(dp=C.DPConfig(noise_multiplier=1.0, l2_clip=5.0, clipping="adaptive",
                                     clip_learning_rate=0.5), **kw)


def test_a_resumed_run_clips_at_the_checkpointed_c_bit_for_bit(digits_train, tmp_path):
    """4 steps straight against 2 + a checkpoint + a new process's Trainer for the last 2 (reproducible
    mode, op determinism): the same weights and the same C_t, which the checkpoint carries."""
    from tensorflow.python.framework import config as tf_config

    from dp_zoo.engine import checkpoint
    from tests.privacy.conftest import make_trainer

    cfg = _adaptive_config(deterministic=True, steps=4, checkpoint_every=2)
    tf_config.enable_op_determinism()
    try:
        straight = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "straight"))
        record = straight.fit()
        first = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "resumed"))
        first.total_steps = 2
        first.fit()
        meta, arrays = checkpoint.load_newest(checkpoint.checkpoint_dir(str(tmp_path / "resumed")))[0]
        assert meta["step"] == 2 and float(arrays["adaptive_l2_clip"]) == float(first.clip_state.numpy()) != 5.0
        resumed = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "resumed"))
        resumed.fit()
    finally:
        tf_config.disable_op_determinism()
    assert float(resumed.clip_state.numpy()) == float(straight.clip_state.numpy())
    for a, b in zip(straight.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    rule = record["privacy"]["clipping"]
    assert rule["mode"] == "adaptive" and rule["final_l2_clip"] == float(straight.clip_state.numpy())
    assert [h["l2_clip"] for h in record["history"]][-1] == rule["final_l2_clip"]  # C_t in the history too
    assert rule["gradient_noise_multiplier"] == adaptive_clip.gradient_noise_multiplier(1.0, 64 / 20)
    assert record["privacy"]["noise_multiplier"] == 1.0 and record["privacy"]["l2_clip"] == 5.0


def test_the_command_lines_take_the_adaptive_flags():
    from dp_zoo.commands import train as train_cli, train_flags, tune as tune_cli
    from dp_zoo.recipes import recipes

    args = ["--model", "wrn_test", "--clipping", "adaptive", "--target-quantile", "0.7", "--clip-lr", "0.1",
            "--clip-count-noise", "30"]
    _, config, _ = train_cli.resolve(train_cli._parser().parse_args(args))
    d = config.dp
    assert (d.clipping, d.target_quantile, d.clip_learning_rate, d.count_noise) == ("adaptive", 0.7, 0.1, 30.0)
    with pytest.raises(train_flags.UsageError, match="--target-quantile must be in"):
        train_cli.resolve(train_cli._parser().parse_args(["--model", "wrn_test", "--target-quantile", "1.5"]))
    tune_args = tune_cli._parser().parse_args(["--recipe", "wrn_digits_eps8", "--clipping", "adaptive",
                                               "--target-quantile", "0.6"])
    tuned = tune_cli._with_clipping(recipes.get("wrn_digits_eps8").config, tune_args)
    assert (tuned.dp.clipping, tuned.dp.target_quantile) == ("adaptive", 0.6)


def test_tan_scales_an_explicit_count_noise_with_the_batch():
    from dp_zoo.engine import tan
    from dp_zoo.recipes import config as C

    cfg = C.TrainConfig(model="wrn_test", batch_size=256, steps=10,
                        dp=C.DPConfig(noise_multiplier=4.0, clipping="adaptive", count_noise=20.0))
    sim = tan.simulate(cfg, 4, dataset_size=1000)
    assert (sim.batch_size, sim.dp.noise_multiplier, sim.dp.count_noise) == (64, 1.0, 5.0)
    full = resolve.resolve_config(cfg, 1000)
    small = resolve.resolve_config(sim, 1000)
    assert small.update_noise_multiplier / small.noise_multiplier == pytest.approx(
        full.update_noise_multiplier / full.noise_multiplier)


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import dp_zoo
    from dp_zoo.train import config as C, data, engine
    ds = data.load_dataset(C.DataConfig(), "train")
    def run(strategy, mode):
        cfg = C.TrainConfig(model="wrn_test", batch_size=64, physical_batch_size=32, steps=3, seed=1,
                            deterministic=True, dp=C.DPConfig(noise_multiplier=1.0, l2_clip=5.0, clipping=mode,
                                                              clip_learning_rate=0.5),
                            optim=C.OptimConfig(learning_rate=0.5))
        with strategy.scope():
            keras.utils.set_random_seed(0)
            m = dp_zoo.create_model("wrn_test", num_classes=10)
        t = engine.Trainer(m, cfg, ds, strategy=strategy, progress=False)
        t.fit()
        c = None if t.clip_state is None else float(t.clip_state.numpy())
        return [v.numpy() for v in m.trainable_variables], c
    for mode in ("adaptive", "automatic", "per_layer"):
        (single, c1), (mirrored, c2) = run(tf.distribute.get_strategy(), mode), run(
            tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), mode)
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored))
        print("RESULT", mode, worst, c1, c2)
        assert worst < 1e-4, (mode, worst)
        if mode == "adaptive":
            assert abs(c1 - c2) <= 1e-6 * c1 and c1 != 5.0, (c1, c2)
""")


@pytest.mark.slow  # three modes, two strategies each, traced and run: ~80 s on 2 cores
def test_two_replicas_equal_one_device_under_every_rule_and_all_reduce_the_count():
    r = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.slow  # a real training and export: ~40-60 s on 2 cores
def test_an_adaptive_run_publishes_its_rule(tmp_path):
    """The CLI end to end with K=2 views and a trained subset: the record, card.json and the card's README
    state the mode, its parameters, the gradient's sigma and the last C."""
    import json

    from tests.helpers import train_in_process

    out = tmp_path / "artifact"
    code = train_in_process("--model", "wrn_test", "--steps", "3", "--augmult", "2", "--clipping", "adaptive",
                            "--l2-clip", "2.0", "--target-quantile", "0.6", "--trainable", "stage3|logits",
                            "--run-dir", str(tmp_path / "run"), "--publish-dir", str(out), "--eval-every", "0")
    assert code == 0
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    rule = record["privacy"]["clipping"]
    assert rule["mode"] == "adaptive" and rule["initial_l2_clip"] == 2.0 and rule["target_quantile"] == 0.6
    assert rule["gradient_noise_multiplier"] > record["privacy"]["noise_multiplier"] and rule["final_l2_clip"] > 0
    assert json.loads((out / "card.json").read_text())["privacy"]["clipping"] == rule
    assert "clipping rule (noise std = sigma x its sensitivity) | adaptive" in (out / "README.md").read_text()


@pytest.mark.slow  # features of every training example, then a probe: ~30-50 s on 2 cores
def test_a_linear_probe_adapts_c_on_its_features(tmp_path):
    import json

    from tests.helpers import train_in_process

    code = train_in_process("--model", "wrn_test", "--steps", "4", "--augmult", "2", "--linear-probe",
                            "--clipping", "adaptive", "--l2-clip", "100", "--clip-lr", "1.0",
                            "--run-dir", str(tmp_path / "run"), "--no-publish", "--eval-every", "0")
    assert code == 0
    rule = json.loads((tmp_path / "run" / "run_record.json").read_text())["privacy"]["clipping"]
    # Every head gradient is far below C_0 = 100: the noisy counts say "all unclipped", so C falls.
    assert rule["mode"] == "adaptive" and rule["final_l2_clip"] < 100 * math.exp(-1.0 * 0.3 * 4)


@pytest.mark.slow  # two tiny trials at most and an export: ~40-60 s on 2 cores
def test_a_tuning_with_adaptive_clipping_publishes_the_rule_with_the_total(tmp_path):
    """The tuner's per-point sigma is the pair's (charged); the published card states the adaptive rule with
    the gradient's share of the selected point's sigma."""
    import dataclasses
    import json

    from dp_zoo import tune
    from dp_zoo.accounting import tuning
    from dp_zoo.jobs import training as run
    from dp_zoo.recipes import recipes

    recipe = recipes.get("wrn_digits_eps8")
    config = recipe.config.replace(dp=dataclasses.replace(recipe.config.dp, clipping="adaptive"))
    dist = tuning.TrialDistribution.parse("poisson:1")
    secret = next(bytes([i]) * 32 for i in range(256)
                  if tuning.draw_trials(dist, tuning.trial_rng(bytes([i]) * 32, "trials")) == 1)
    options = run.RunOptions(run_dir=str(tmp_path / "run"), publish_dir=str(tmp_path / "pub"), progress=False)
    tune.Tuner("wrn_digits_eps8", recipe, tune.parse_grid(["steps=2,3"]), dist, target_epsilon=8.0,
               validation_size=300, score_noise=10.0, options=options, search_space_source="tests",
               config=config, model="wrn_test", secret=secret).run()
    card = json.loads((tmp_path / "pub" / "card.json").read_text())
    p, rule = card["privacy"], card["privacy"]["clipping"]
    assert rule["mode"] == "adaptive" and p["epsilon"] == p["tuning"]["total_epsilon"] <= 8.0
    assert rule["gradient_noise_multiplier"] == adaptive_clip.gradient_noise_multiplier(
        p["noise_multiplier"], rule["count_noise_stddev"])
