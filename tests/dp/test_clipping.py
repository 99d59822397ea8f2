"""``clipped_grad_sum`` against the naive per-example loop: the generic path and the WS fast path
(docs/design.md, "DP-SGD semantics")."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import dp_zoo
from dp_zoo import dp
from dp_zoo.dp import ws_fast_path
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
    fn = tf.function(lambda x, y, mask, c: dp.clipped_grad_sum(m, x, y, l2_clip=c, mask=mask),
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
    a, _ = dp.clipped_grad_sum(m, x, y, l2_clip=0.5)
    b, _ = dp.clipped_grad_sum(m, x, y, l2_clip=0.5, vectorized=False)
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


@pytest.mark.parametrize("fold_gain", [True, False])
@pytest.mark.parametrize("name,shape", [("wrn_test", (8, 8, 1)), ("nf_resnet_test", (16, 16, 3)),
                                        # 30-35 s each to trace (grouped convolutions): the slow set;
                                        # tests/models/test_contract.py runs its default path quickly
                                        pytest.param("nfnet_test", (16, 16, 3), marks=pytest.mark.slow)])
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
    assert ws_fast_path.ws_kernels(m), "the model has trainable WS layers: the fast path must be the one tested"
    x = rng.normal(size=(4, 2) + shape).astype("float32")
    y = rng.integers(0, 5, size=4).astype("int32")
    mask = np.array([1, 0, 1, 1], np.float32)
    paths = dp.ws_gradient_paths(m, (2,) + shape, ghost=False, fold_gain=fold_gain, unfold=False)
    assert set(paths.values()) == {"fold" if fold_gain else "plain"}
    assert_equals_naive_loop(m, x, y, mask, rel=1e-4, ghost=False, fold_gain=fold_gain, unfold=False)


def test_a_ws_layer_called_twice():
    """Folded or not: both calls' gradients count (exact). Ghost clipping and the unfold path cover one call:
    a clear error where asked for, the per-example loop where ``"auto"`` chose them."""
    keras.utils.set_random_seed(3)
    from dp_zoo.models.ws_conv import WSConv2D

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
        assert_equals_naive_loop(m, x, y, mask, rel=1e-5, ghost=False, fold_gain=fold_gain, unfold=False)
    # The defaults would unfold the layer (a 3x3 kernel on 6x6 inputs): "auto" falls back for it.
    assert dp.ws_gradient_paths(m, (2, 6, 6, 2)) == {"shared": "fold"}
    assert_equals_naive_loop(m, x, y, mask, rel=1e-5)
    assert_equals_naive_loop(m, x, y, mask, rel=1e-5, ghost="auto", unfold="auto")
    for asked in ({"ghost": True}, {"ghost": False, "unfold": True}):
        with pytest.raises(NotImplementedError, match="'shared' is called more than once.*ghost=False"):
            dp.clipped_grad_sum(m, x, y, l2_clip=1.0, **asked)


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
