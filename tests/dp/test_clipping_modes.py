"""Automatic and per-layer clipping (issue #31; ``dp_zoo.dp.clipping_modes``): the bounds, the sums, the noise.

The bounds are checked one example at a time (the other rows masked out), so
each sum IS that example's contribution, including adversarial inputs
(gradients scaled by 1e4 and by 1e-4); the sums are checked against the
naive per-example loop on the weight-standardisation fast path (ghost on
and off) and on the generic path.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo import dp
from dp_zoo.dp import clipping_modes
from dp_zoo.engine import resolve, step as step_lib
from tests.helpers import naive_per_example_grads

B, K = 4, 2
PER_LAYER = dp.Clipping("per_layer", l2_clip=0.05)
BY_PATTERN = dp.Clipping("per_layer", layer_clips=((r"stage1", 0.01), (r"logits|stem", 0.03), (".*", 0.02)))
AUTOMATIC = dp.Clipping("automatic", gamma=0.01)


@pytest.fixture(scope="module")
def wrn():
    keras.utils.set_random_seed(3)
    m = dp_zoo.create_model("wrn_test", num_classes=5, input_shape=(8, 8, 1))
    rng = np.random.default_rng(3)
    m.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in m.get_weights()])
    return m


def _data(scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, K, 8, 8, 1)) * scale).astype("float32"), rng.integers(0, 5, B).astype("int32")


def _reference(m, x, y, mask, clipping):
    per_example = naive_per_example_grads(m, x, y)
    paths = [v.path for v in m.trainable_variables]
    want = [np.zeros_like(a) for a in per_example[0]]
    for g, keep in zip(per_example, mask):
        if not keep:
            continue
        if clipping.mode == "automatic":
            factors = [1.0 / (math.sqrt(sum((a ** 2).sum() for a in g)) + clipping.gamma)] * len(g)
        else:
            groups, clips = clipping_modes.variable_groups(clipping, paths)
            sq = {}
            for gi, a in zip(groups, g):
                sq[gi] = sq.get(gi, 0.0) + (a ** 2).sum()
            factors = [min(1.0, clips[gi] / math.sqrt(sq[gi])) for gi in groups]
        for i, a in enumerate(g):
            want[i] += factors[i] * a
    return want


@pytest.mark.parametrize("clipping", [AUTOMATIC, PER_LAYER, BY_PATTERN], ids=["automatic", "per_layer", "patterns"])
@pytest.mark.parametrize("path", ["ws_ghost", "ws_direct", "generic"])
def test_sum_equals_the_naive_loop(wrn, clipping, path):
    x, y = _data()
    mask = np.array([1, 1, 0, 1], np.float32)
    kw = {"ws_ghost": dict(ghost=True), "ws_direct": dict(ghost=False), "generic": dict(vectorized=False)}[path]
    got, _ = dp.clipped_grad_sum(wrn, x, y, l2_clip=1.0, mask=mask, clipping=clipping, **kw)
    want = _reference(wrn, x, y, mask, clipping)
    flat_got = np.concatenate([g.numpy().ravel() for g in got])
    flat_want = np.concatenate([w.ravel() for w in want])
    assert np.linalg.norm(flat_got - flat_want) <= 1e-4 * np.linalg.norm(flat_want)


def _one_example_sums(m, clipping, scale):
    """Each example's contribution alone: the clipped sum with every other row masked out."""
    x, y = _data(scale, seed=1)
    fn = tf.function(lambda mask: dp.clipped_grad_sum(m, x, y, l2_clip=1.0, mask=mask, clipping=clipping)[0])
    return [[g.numpy().astype(np.float64) for g in fn(tf.one_hot(b, B))] for b in range(B)]


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
def test_automatic_bounds_every_contribution_by_one(wrn, scale):
    for contribution in _one_example_sums(wrn, AUTOMATIC, scale):
        norm = math.sqrt(sum((g ** 2).sum() for g in contribution))
        assert 0 < norm <= 1.0 * (1 + 1e-6)
    assert AUTOMATIC.sensitivity == 1.0


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_per_layer_bounds_each_group_by_its_clip(wrn, scale):
    groups, clips = clipping_modes.variable_groups(BY_PATTERN, [v.path for v in wrn.trainable_variables])
    assert sorted(set(groups)) == [0, 1, 2]
    for contribution in _one_example_sums(wrn, BY_PATTERN, scale):
        for g_index, c in enumerate(clips):
            norm = math.sqrt(sum((g ** 2).sum() for g, gi in zip(contribution, groups) if gi == g_index))
            assert norm <= c * (1 + 1e-6)
    assert BY_PATTERN.sensitivity == pytest.approx(math.sqrt(0.01 ** 2 + 0.03 ** 2 + 0.02 ** 2))
    # The equal split keeps the flat sensitivity: L layers at C / sqrt(L).
    assert PER_LAYER.sensitivity == 0.05


def test_the_step_adds_noise_of_sigma_times_the_sensitivity_once():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(500, name="a"), keras.layers.Dense(400, name="b")])
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build(model.trainable_variables)
    spec = step_lib.StepSpec(private=True, l2_clip=1.0, noise_multiplier=2.0, expected_batch_size=10.0,
                             clipping=dp.Clipping("per_layer", layer_clips=(("a/", 3.0), ("b/", 4.0))))
    assert spec.sensitivity == 5.0
    fns = step_lib.build_step_functions(model, optimizer, spec, step_lib.no_averages(),
                                        strategy=tf.distribute.get_strategy(), views=step_lib.single_view)
    before = [v.numpy().copy() for v in model.trainable_variables]
    zeros = [tf.zeros_like(v) for v in model.trainable_variables]
    assert fns.apply(zeros, tf.constant(0, tf.int64), tf.constant([5, 6], tf.int64), tf.constant(False),
                     tf.constant(False))
    update = np.concatenate([(b - v.numpy()).ravel() for b, v in zip(before, model.trainable_variables)])
    # SGD(1): the update is the noisy sum / B; its std is sigma * sqrt(3^2 + 4^2) / B = 1.0.
    assert update.std() == pytest.approx(2.0 * 5.0 / 10.0, rel=0.02)


def test_bad_clipping_settings_are_clear_errors():
    with pytest.raises(ValueError, match="clipping must be one of flat, automatic, per_layer, adaptive"):
        dp.Clipping("quantile")
    with pytest.raises(ValueError, match="gamma > 0"):
        dp.Clipping("automatic", gamma=0.0)
    with pytest.raises(ValueError, match="for per-layer clipping"):
        dp.Clipping("flat", layer_clips=((".*", 1.0),))
    with pytest.raises(ValueError, match="not a regular expression"):
        dp.Clipping("per_layer", layer_clips=(("(", 1.0),))
    with pytest.raises(ValueError, match="matches none of the patterns"):
        clipping_modes.variable_groups(dp.Clipping("per_layer", layer_clips=(("conv", 1.0),)), ["dense/kernel"])
    with pytest.raises(ValueError, match="groups whole layers"):
        clipping_modes.variable_groups(dp.Clipping("per_layer", layer_clips=(("kernel", 1.0), (".*", 1.0))),
                                       ["conv/kernel", "conv/gain"])
    plan = resolve.resolve_privacy(dataset_size=100, batch_size=10, steps=3, noise_multiplier=1.0, l2_clip=4.0,
                                   clipping="automatic", clipping_gamma=0.1)
    assert plan.clipping == dp.Clipping("automatic", 4.0, 0.1) and plan.clipping.sensitivity == 1.0


def test_make_private_takes_a_clipping_rule():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    private = dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=120, batch_size=40,
                                  physical_batch_size=16, clipping="per_layer")
    private.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.default_rng(0)
    private.fit(rng.normal(size=(120, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 120), steps=2, verbose=0)
    assert private.plan.clipping.mode == "per_layer" and private.ledger.steps == 2
    with pytest.raises(ValueError, match="clipping must be one of"):
        dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=120, batch_size=40,
                            clipping="quantile")


def test_the_command_lines_take_the_clipping_flags():
    from dp_zoo.commands import train as train_cli, train_flags, tune as tune_cli

    args = ["--model", "wrn_test", "--clipping", "per_layer", "--layer-clips", "stage1|stem=0.5; .*=1.0"]
    _, config, _ = train_cli.resolve(train_cli._parser().parse_args(args))
    assert (config.dp.clipping, config.dp.layer_clips) == ("per_layer", (("stage1|stem", 0.5), (".*", 1.0)))
    _, config, _ = train_cli.resolve(train_cli._parser().parse_args(
        ["--model", "wrn_test", "--clipping", "automatic", "--clipping-gamma", "0.1"]))
    assert (config.dp.clipping, config.dp.clipping_gamma) == ("automatic", 0.1)
    for bad, match in ((["--clipping", "quantile"], "is not a clipping rule"),
                       (["--clipping", "per_layer", "--layer-clips", "stage1"], "REGEX=C pairs")):
        with pytest.raises(train_flags.UsageError, match=match):
            train_cli.resolve(train_cli._parser().parse_args(["--model", "wrn_test"] + bad))
    from dp_zoo.recipes import recipes

    tune_args = tune_cli._parser().parse_args(["--recipe", "wrn_digits_eps8", "--clipping", "automatic"])
    tuned = tune_cli._with_clipping(recipes.get("wrn_digits_eps8").config, tune_args)
    assert tuned.dp.clipping == "automatic"


@pytest.mark.slow  # a real training and export: ~40-60 s on 2 cores
def test_a_per_layer_run_with_augmult_and_a_trained_subset_publishes_its_rule(tmp_path):
    """The CLI end to end: K=2 views, only the classifier and the last stage trained, per-layer clipping;
    the record, card.json and the card's README state the rule and its sensitivity."""
    import json

    from tests.helpers import train_in_process

    out = tmp_path / "artifact"
    code = train_in_process("--model", "wrn_test", "--steps", "3", "--augmult", "2", "--trainable", "stage3|logits",
                            "--clipping", "per_layer", "--l2-clip", "2.0", "--run-dir", str(tmp_path / "run"),
                            "--publish-dir", str(out), "--eval-every", "0")
    assert code == 0
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    rule = record["privacy"]["clipping"]
    assert rule["mode"] == "per_layer" and rule["sensitivity"] == record["privacy"]["l2_clip"] == 2.0
    assert json.loads((out / "card.json").read_text())["privacy"]["clipping"] == rule
    assert "clipping rule (noise std = sigma x its sensitivity) | per_layer" in (out / "README.md").read_text()
