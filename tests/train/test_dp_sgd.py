"""DP-SGD pure functions against naive references (DESIGN.md §4)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import dp_zoo
from dp_zoo.train import dp_sgd
from tests.helpers import assert_equals_naive_loop


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    m = dp_zoo.create_model("wrn_test", num_classes=5)
    rng = np.random.default_rng(seed)
    # Random (non-zero) head so that gradients reach every layer.
    m.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in m.get_weights()])
    return m


def data(b=6, k=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(b, k, 8, 8, 1)) * scale).astype("float32")
    y = rng.integers(0, 5, size=b).astype("int32")
    return x, y


@pytest.fixture(scope="module")
def wrn_sum():
    """``(model, fn)``: the tiny WRN and ``fn(x, y, mask, c) = clipped_grad_sum`` traced once for a batch of
    6 examples x 3 views (every eager call would re-trace the vectorized map: ~10 s each on 2 cores)."""
    m = tiny_model()
    fn = tf.function(lambda x, y, mask, c: dp_sgd.clipped_grad_sum(m, x, y, l2_clip=c, mask=mask),
                     input_signature=[tf.TensorSpec([6, 3, 8, 8, 1]), tf.TensorSpec([6], tf.int32),
                                      tf.TensorSpec([6]), tf.TensorSpec([])])
    return m, fn


def _norm(grads):
    return np.sqrt(sum(float(tf.reduce_sum(tf.cast(t, tf.float64) ** 2)) for t in grads))


def test_clipped_grad_sum_equals_naive_loop(wrn_sum):
    """At clip norms that clip every example, some, and none; two padding rows."""
    from tests.helpers import clip_and_sum, naive_per_example_grads

    m, fn = wrn_sum
    x, y = data()
    mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
    per_example = naive_per_example_grads(m, x, y)
    for l2_clip in (1e-3, 7.0, 1e3):
        got, norms = fn(x, y, mask, l2_clip)
        want, want_norms = clip_and_sum(per_example, l2_clip, mask)
        np.testing.assert_allclose(norms.numpy(), want_norms, rtol=1e-4)
        flat_got = np.concatenate([g.numpy().ravel() for g in got])
        flat_want = np.concatenate([w.ravel() for w in want])
        assert np.linalg.norm(flat_got - flat_want) <= 1e-5 * max(np.linalg.norm(flat_want), 1e-12) + 1e-7, l2_clip
    assert (want_norms > 7.0).any() and (want_norms < 7.0).any()  # c=7 clips some examples, not all


def test_vectorized_and_loop_paths_agree():
    m = tiny_model(1)
    x, y = data(seed=1)
    a, _ = dp_sgd.clipped_grad_sum(m, x, y, l2_clip=0.5)
    b, _ = dp_sgd.clipped_grad_sum(m, x, y, l2_clip=0.5, vectorized=False)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-4, atol=1e-6)


def test_contributions_bounded_by_clip_far_above_and_below(wrn_sum):
    """Each example's clipped contribution (the sum with only it unmasked) has norm min(its norm, C)."""
    _, fn = wrn_sum
    x, y = data(seed=2)
    x[0] *= 100.0  # huge gradient
    for c in (0.05, 1e4):
        contrib = []
        for i in range(6):
            mask = np.zeros(6, np.float32)
            mask[i] = 1
            g, norms = fn(x, y, mask, c)
            contrib.append(_norm(g))
        norms = norms.numpy()
        if c == 0.05:
            assert np.all(np.array(contrib) <= c + 1e-6)
            assert norms.max() > 10 * c  # some examples really were clipped
        else:
            np.testing.assert_allclose(contrib, norms, rtol=1e-4)  # unclipped below C


def test_removing_one_example_changes_sum_by_at_most_c(wrn_sum):
    _, fn = wrn_sum
    x, y = data(seed=3)
    c = 0.1
    full, _ = fn(x, y, np.ones(6, np.float32), c)
    for i in range(6):
        mask = np.ones(6, np.float32)
        mask[i] = 0
        part, _ = fn(x, y, mask, c)
        assert _norm([a - b for a, b in zip(full, part)]) <= c + 1e-6


def test_padding_rows_contribute_exactly_zero_even_if_nonfinite(wrn_sum):
    m, fn = wrn_sum
    x, y = data(seed=4)
    x[4:] = np.nan
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    g, _ = fn(x, y, mask, 1.0)
    # The reference has no padding rows at all: the naive loop over the 4 real examples.
    from tests.helpers import clip_and_sum, naive_per_example_grads

    ref, _ = clip_and_sum(naive_per_example_grads(m, x[:4], y[:4]), 1.0, np.ones(4))
    for a, b in zip(g, ref):
        assert np.all(np.isfinite(a.numpy()))
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-6)


def test_noise_std_and_seed_reproducibility():
    zeros = [tf.zeros([200, 250])]
    a = dp_sgd.add_noise(zeros, stddev=3.0, seed=tf.constant([1, 2], tf.int64))[0].numpy()
    b = dp_sgd.add_noise(zeros, stddev=3.0, seed=tf.constant([1, 2], tf.int64))[0].numpy()
    c = dp_sgd.add_noise(zeros, stddev=3.0, seed=tf.constant([1, 3], tf.int64))[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert abs(a.std() - 3.0) < 0.05 and abs(a.mean()) < 0.05
    gen = tf.random.Generator.from_non_deterministic_state()
    d = dp_sgd.add_noise(zeros, stddev=3.0, generator=gen)[0].numpy()
    assert abs(d.std() - 3.0) < 0.05


def test_ema_decay_warmup_formula():
    for t, mu in [(0, 0.999), (5, 0.999), (10_000, 0.999), (3, 0.5)]:
        want = min(mu, (1 + t) / (10 + t))
        assert abs(float(dp_sgd.ema_decay(t, mu)) - want) < 1e-7
    e = [tf.Variable([1.0, 2.0])]
    dp_sgd.ema_update(e, [tf.constant([3.0, 4.0])], 0.25)
    np.testing.assert_allclose(e[0].numpy(), [0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 4])
    p = [tf.Variable([0.0])]
    for i, v in enumerate([2.0, 4.0, 6.0]):
        dp_sgd.polyak_update(p, [tf.constant([v])], i)
    np.testing.assert_allclose(p[0].numpy(), [4.0], rtol=1e-6)


def test_noisy_normalized_sum_is_sum_plus_one_gaussian_over_expected_b():
    sigma, c, b = 2.0, 0.5, 64.0
    seed = tf.constant([5, 9], tf.int64)
    zeros = [tf.zeros([300, 300]), tf.zeros([7])]
    pure = dp_sgd.noisy_normalized_sum(zeros, l2_clip=c, noise_multiplier=sigma,
                                       expected_batch_size=b, seed=seed)
    # Std of the released update is sigma * C / B (DESIGN.md §4).
    assert abs(pure[0].numpy().std() / (sigma * c / b) - 1) < 0.01
    # Signal and noise: (sum + n) / B with the same n for the same seed.
    g = [tf.fill([300, 300], 3.0), tf.range(7, dtype=tf.float32)]
    got = dp_sgd.noisy_normalized_sum(g, l2_clip=c, noise_multiplier=sigma,
                                      expected_batch_size=b, seed=seed)
    for a, x, n in zip(got, g, pure):
        np.testing.assert_allclose(a.numpy(), x.numpy() / b + n.numpy(), rtol=1e-5, atol=1e-6)


def test_weight_decay_is_added_to_the_noisy_update():
    upd = [tf.constant([1.0, -2.0])]
    params = [tf.constant([10.0, 20.0])]
    np.testing.assert_allclose(dp_sgd.add_weight_decay(upd, params, 0.1)[0].numpy(), [2.0, 0.0])
    assert dp_sgd.add_weight_decay(upd, params, 0.0)[0] is upd[0]


def test_learning_rate_schedules_and_optimizers():
    from dp_zoo.train.config import OptimConfig

    assert dp_sgd.learning_rate_schedule(OptimConfig(learning_rate=2.0), 100) == 2.0
    cos = dp_sgd.learning_rate_schedule(OptimConfig(learning_rate=2.0, schedule="cosine"), 100)
    np.testing.assert_allclose([float(cos(0)), float(cos(50)), float(cos(100))], [2.0, 1.0, 0.0], atol=1e-5)
    warm = dp_sgd.learning_rate_schedule(
        OptimConfig(learning_rate=1.0, schedule="linear_warmup_cosine", warmup_steps=10), 110)
    np.testing.assert_allclose([float(warm(0)), float(warm(5)), float(warm(10)), float(warm(110))],
                               [0.0, 0.5, 1.0, 0.0], atol=1e-5)
    sgd = dp_sgd.make_optimizer(OptimConfig(momentum=0.9, nesterov=True), 10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and sgd.nesterov
    assert isinstance(dp_sgd.make_optimizer(OptimConfig(name="adam"), 10), keras.optimizers.Adam)
    with pytest.raises(ValueError, match="schedule"):
        dp_sgd.learning_rate_schedule(OptimConfig(schedule="step"), 10)
    with pytest.raises(ValueError, match="optimizer"):
        dp_sgd.make_optimizer(OptimConfig(name="lamb"), 10)


@pytest.mark.parametrize("fold_gain", [True, False])
@pytest.mark.parametrize("name,shape", [("wrn_test", (8, 8, 1)), ("nf_resnet_test", (16, 16, 3)),
                                        ("nfnet_test", (16, 16, 3))])
def test_standardized_kernel_path_equals_naive_loop(name, shape, fold_gain):
    """The fast path (per-example grads w.r.t. standardized kernels, closed-form norms) is exact.

    Random gains so the gain terms show; one padding row; clip norms that
    clip every example and none; every WS layer with its gain folded into
    the kernel (grouped convolutions of the NFNet included) and none.
    """
    keras.utils.set_random_seed(2)
    m = dp_zoo.create_model(name, num_classes=5, input_shape=shape)
    rng = np.random.default_rng(2)
    m.set_weights([w + rng.normal(scale=0.2, size=w.shape).astype("float32") for w in m.get_weights()])
    assert dp_sgd._ws_kernels(m), "the model has trainable WS layers: the fast path must be the one tested"
    x = rng.normal(size=(4, 2) + shape).astype("float32")
    y = rng.integers(0, 5, size=4).astype("int32")
    mask = np.array([1, 0, 1, 1], np.float32)
    paths = dp_sgd.ws_gradient_paths(m, (2,) + shape, ghost=False, fold_gain=fold_gain)
    assert set(paths.values()) == {"fold" if fold_gain else "plain"}
    assert_equals_naive_loop(m, x, y, mask, rel=1e-4, ghost=False, fold_gain=fold_gain)


def test_a_ws_layer_called_twice():
    """Folded: both calls' gradients count (exact). Ghost clipping covers one call: a clear error."""
    keras.utils.set_random_seed(3)
    from dp_zoo.models.layers import WSConv2D

    inp = keras.Input((6, 6, 2))
    conv = WSConv2D(2, 3, name="shared")
    h = keras.layers.Activation("tanh")(conv(inp))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(conv(h)))
    m = keras.Model(inp, out)
    rng = np.random.default_rng(3)
    m.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in m.get_weights()])
    x = rng.normal(size=(3, 2, 6, 6, 2)).astype("float32")
    y = np.array([0, 2, 1], np.int32)
    mask = np.ones([3], np.float32)
    for fold_gain in (True, False):
        assert_equals_naive_loop(m, x, y, mask, rel=1e-5, ghost=False, fold_gain=fold_gain)
    with pytest.raises(NotImplementedError, match="'shared' is called more than once.*ghost=False"):
        dp_sgd.clipped_grad_sum(m, x, y, l2_clip=1.0, ghost=True)


@pytest.mark.parametrize("ghost", [True, False, "auto"])
def test_ghost_clipping_equals_naive_loop(ghost):
    """Ghost norms (WS conv kernels clipped from input patches and output gradients) are exact.

    ``True`` puts every WSConv2D of the tiny WRN on the ghost path, ``False``
    none, ``"auto"`` the cheaper per layer (here the 2x2 stage); K=3 views,
    strided and 1x1 skip convolutions, one padding row, clip norms that clip
    every example and none.
    """
    m = tiny_model(5)
    x, y = data(b=5, k=3, seed=5)
    mask = np.array([1, 1, 0, 1, 1], np.float32)
    assert_equals_naive_loop(m, x, y, mask, rel=1e-5, ghost=ghost)


@pytest.fixture(scope="module")
def wrn16_4_paths():
    """``ws_gradient_paths`` of WRN-16-4 at 32x32 (each call traces a whole step: ~20 s on 2 cores)."""
    m = dp_zoo.create_model("wrn16_4", num_classes=10, input_shape=(32, 32, 3))
    paths = {k: dp_sgd.ws_gradient_paths(m, (k, 32, 32, 3)) for k in (1, 2, 4)}
    return m, paths


def _with(paths, kind):
    return [n for n, p in paths.items() if p == kind]


def test_ghost_auto_picks_the_small_spatial_stage(wrn16_4_paths):
    """``"auto"``: ghost norms where the Gram matrices cost well under the kernel gradients.

    WRN-16-4 at 32x32: at K=1 the 3x3 convolutions of the 8x8 stage (the 1x1
    skip convolution's kernel gradient is cheap anyway); at K=2 the three
    stride-1 ones; at K=4 (more positions per example) none.
    """
    m, paths = wrn16_4_paths
    stage3 = ["stage3_block1_conv1", "stage3_block1_conv2", "stage3_block2_conv1", "stage3_block2_conv2"]
    assert _with(paths[1], "ghost") == stage3
    assert _with(paths[2], "ghost") == stage3[1:]
    assert _with(paths[4], "ghost") == []
    assert len(dp_sgd.ghost_layer_names(m, (1, 32, 32, 3), True)) == len(dp_sgd._ws_kernels(m))
    with pytest.raises(ValueError, match="ghost"):
        dp_sgd.clipped_grad_sum(m, np.zeros((1, 1, 32, 32, 3), np.float32), np.zeros([1], np.int32),
                                l2_clip=1.0, ghost="yes")


def test_fold_gain_auto_picks_layers_with_many_positions_per_fan_in(wrn16_4_paths):
    """``fold_gain="auto"``: the gain goes into the kernel where the output is large against the fan-in.

    WRN-16-4 at 32x32: at K=1 the stem, the 32x32 stage and the 1x1 skip
    convolution into the 16x16 stage (the 8x8 stage's 3x3 convolutions go
    ghost); at K=4 every convolution but the 8x8 stage's 3x3 ones.
    """
    m, paths = wrn16_4_paths
    assert sorted(_with(paths[1], "fold")) == sorted(
        ["stem_conv", "stage2_block1_skip_conv"] + [f"stage1_block{b}_conv{c}" for b in (1, 2) for c in (1, 2)]
        + ["stage1_block1_skip_conv"])
    assert sorted(n for n, p in paths[4].items() if p != "fold") == [
        f"stage3_block{b}_conv{c}" for b in (1, 2) for c in (1, 2)]
    assert set(dp_sgd.ws_gradient_paths(m, (4, 32, 32, 3), ghost=False, fold_gain=False).values()) == {"plain"}
    with pytest.raises(ValueError, match="fold_gain"):
        dp_sgd.clipped_grad_sum(m, np.zeros((1, 1, 32, 32, 3), np.float32), np.zeros([1], np.int32),
                                l2_clip=1.0, fold_gain="yes")


@pytest.mark.parametrize("kernel,strides,padding,hw", [
    (3, 1, "same", 7), (3, 2, "same", 8), (3, 2, "same", 7), (1, 2, "same", 8), (3, 1, "valid", 6)])
def test_patch_gram_both_ways_and_ghost_norms_equal_the_kernel_gradient_path(kernel, strides, padding, hw):
    """``patch_gram`` from patches and from the pixel Gram agree with the patches' own Gram;
    ``ghost_ws_sq_norms`` equals the norm of the WS backward of the per-example kernel gradient."""
    from dp_zoo.models.layers import ws_backward, ws_geometry, ws_kernel_sq_norms

    rng = np.random.default_rng(7)
    b, k, cin, cout = 3, 2, 4, 6
    layer = dp_zoo.models.layers.WSConv2D(cout, kernel, strides=strides, padding=padding)
    layer.build((None, hw, hw, cin))
    x = rng.normal(size=(b, k, hw, hw, cin)).astype("float32")
    w = rng.normal(size=(kernel, kernel, cin, cout)).astype("float32")
    flat = x.reshape(b * k, hw, hw, cin)
    p = dp_sgd.conv_patches(tf.constant(flat), layer).numpy()  # [B*K, positions, D]
    want = tf.nn.conv2d(flat, w, strides=strides, padding=padding.upper()).numpy().reshape(b * k, -1, cout)
    np.testing.assert_allclose(p @ w.reshape(-1, cout), want, rtol=1e-4, atol=1e-4)
    p = p.reshape(b, -1, p.shape[-1])  # all views of an example: T = K x positions
    for method in ("patches", "pixels"):
        gram, rows = dp_sgd.patch_gram(tf.constant(x), layer, method=method)
        np.testing.assert_allclose(gram.numpy(), p @ p.transpose(0, 2, 1), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(rows.numpy(), p.sum(-1), rtol=1e-4, atol=1e-4)
    dpre = tf.constant(rng.normal(size=(b, p.shape[1], cout)).astype("float32"))
    a = tf.reshape(tf.einsum("btd,bto->bdo", p, dpre), [b, kernel, kernel, cin, cout])
    ds, s, c = ws_geometry(tf.constant(w), eps=1e-4)
    pa = tf.reduce_sum(a * ds, axis=(1, 2, 3))
    direct = tf.reduce_sum(tf.square(ws_backward(a, ds, s, c, 1.0)), axis=(1, 2, 3, 4)).numpy()
    np.testing.assert_allclose(ws_kernel_sq_norms(a, pa, ds, s, c).numpy(), direct, rtol=1e-4)
    # With the gain folded in: ``a`` is w.r.t. d * s * gain, the norm is of ws_backward(a, ..., gain).
    gain = tf.constant(rng.normal(size=[cout]).astype("float32"))
    folded = tf.reduce_sum(tf.square(ws_backward(a, ds, s, c, gain)), axis=(1, 2, 3, 4)).numpy()
    np.testing.assert_allclose(ws_kernel_sq_norms(a, tf.reduce_sum(a * gain * ds, axis=(1, 2, 3)), ds, s, c,
                                                  gain=gain).numpy(), folded, rtol=1e-4)
    gram, rows = dp_sgd.patch_gram(tf.constant(x), layer)
    np.testing.assert_allclose(dp_sgd.ghost_ws_sq_norms(gram, rows, dpre, pa, ds, s, c).numpy(), direct, rtol=1e-4)
