"""Closed-form norms of weight-standardized convolutions never under-estimate.

DP-SGD clips each example's gradient to norm C from the norm that
``clipped_grad_sum`` computes for it; if that norm falls below the norm of
what the example actually adds to the sum, the example contributes more
than C and the privacy guarantee is void. For WS convolutions the norm of
the raw-kernel gradient is computed in closed form (``ws_kernel_sq_norms``,
``ghost_ws_sq_norms``) from per-example tensors in float32, which must hold
up where the kernel gradient is dominated by its mean over the fan-in
(large input offsets, near-constant windows, large GroupNorm offsets) or by
its projection onto the standardized kernel.

The reference ("true") norm of an example is the exact norm of its own
contribution to the clipped sum: ``clipped_grad_sum`` with only that example
unmasked and a clip norm that clips nothing, its WS backward (and, for ghost
layers, the kernel gradient from the layer's input and output gradients)
evaluated in float64 from the float32 per-example tensors the step sums,
and the squared norm accumulated in float64. A float64 copy of the model is
no reference on these inputs: its forward pass differs from the float32
one by the float32 forward's own rounding, which such inputs amplify (the
naive float32 per-example loop itself lands up to 4% below the float64
model under GroupNorm offsets of 3e4, 1e-4 below on the NFNet with input
offsets of 3e4). It is the reference on ordinary inputs
(``test_norms_match_a_float64_model_on_ordinary_inputs``).
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

import dp_zoo
from dp_zoo import dp
from dp_zoo.dp import ws_fast_path
from dp_zoo.models import ws_math, ws_norm_bounds
from dp_zoo.models.ws_conv import WSConv2D

TOL = 1e-6  # computed norm >= true norm * (1 - TOL)
HUGE = 1e30  # a clip norm that clips nothing (its clip factor is exactly 1)


def _ws_backward64(u, ds, s, c, gain):
    """``ws_math.ws_backward`` in float64 (the exact WS backward of float32 inputs)."""
    u, ds, s, c = (tf.cast(t, tf.float64) for t in (u, ds, s, c))
    a = u * tf.cast(gain, tf.float64)
    mean_a = tf.reduce_mean(a, axis=(-4, -3, -2), keepdims=True)
    proj = tf.reduce_sum(a * ds, axis=(-4, -3, -2), keepdims=True)
    return s * (a - mean_a) - (c * s) * proj * ds


@pytest.fixture
def exact_backward(monkeypatch):
    """The step's WS backward and ghost kernel-gradient sums run in float64 (the reference)."""
    real = tf.raw_ops.Conv2DBackpropFilter

    def backprop_filter64(*, input, filter_sizes, out_backprop, strides, padding):
        return real(input=tf.cast(input, tf.float64), filter_sizes=filter_sizes,
                    out_backprop=tf.cast(out_backprop, tf.float64), strides=strides, padding=padding)

    monkeypatch.setattr(ws_fast_path, "ws_backward", _ws_backward64)
    monkeypatch.setattr(tf.raw_ops, "Conv2DBackpropFilter", backprop_filter64)


def _contribution_step(model, ghost, fold_gain, unfold=False):
    return tf.function(lambda x, y, mask: dp.clipped_grad_sum(model, x, y, l2_clip=HUGE, mask=mask,
                                                                   ghost=ghost, fold_gain=fold_gain, unfold=unfold))


def computed_and_true_norms(step, x, y):
    """``(computed norms, norms of each example's own contribution)``, the latter in float64."""
    b = x.shape[0]
    true, computed = [], None
    for i in range(b):
        grads, norms = step(x, y, tf.one_hot(i, b))
        computed = norms.numpy()
        true.append(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in grads)))
    return computed, np.array(true)


def assert_never_below(computed, true, what):
    ratio = computed / true
    assert np.all(np.isfinite(computed)), (what, computed)
    assert np.all(ratio >= 1 - TOL), f"{what}: computed / true norms {ratio} (an under-estimate below {1 - TOL})"


def _labels_against_the_logits(model, x):
    """The least likely class of each example, so that no example's loss is saturated flat."""
    logits = model(x.reshape((-1,) + x.shape[2:])).numpy().reshape(x.shape[0], x.shape[1], -1).mean(1)
    return np.argmin(logits, axis=-1).astype("int32")


def _shrink_ws_kernels(model, factor):
    """Scales the raw WS kernels (the standardized kernels, hence the function, stay the same).

    The raw-kernel gradient scales like 1 / std(raw kernel): smaller raw
    kernels make the WS layers' share of each example's norm dominant, so
    that an error in it shows in the total.
    """
    for _, ki, *_ in dp.ws_kernels(model):
        v = model.trainable_variables[ki]
        v.assign(v * factor)


def adversarial_images(kind, shape, rng, offset, b=4, k=2):
    x = rng.normal(size=(b, k) + shape)
    if kind == "offset":  # one offset for every pixel and channel (unnormalised images)
        x = x + offset
    elif kind == "channel_offsets":  # a different large offset per channel and example
        x = x + rng.uniform(0, offset, size=(b, 1, 1, 1, shape[-1]))
    elif kind == "near_constant":  # almost constant images
        x = offset + 1e-3 * np.sqrt(offset) * x
    elif kind == "piecewise_constant":  # two near-constant regions: near-constant windows, one edge
        top = (np.arange(shape[0]) < shape[0] // 2)[:, None, None]
        x = np.where(top, offset, 0.0) + 1e-2 * x
    elif kind != "normal":
        raise ValueError(kind)
    return x.astype("float32")


# --- the closed form alone ------------------------------------------------------------------------------------------


def _cotangents(kind, ds, rng, b=4, scale=3e4):
    """Per-example cotangents ``a`` [b, *kernel] w.r.t. the standardized kernel, dominated as ``kind`` says."""
    shape = (b,) + tuple(ds.shape)
    noise = rng.normal(size=shape)
    channels = (b, 1, 1, 1, shape[-1])
    per_channel = rng.uniform(0.5, 1.5, size=channels) * rng.choice([-1, 1], size=channels)
    if kind == "mean":  # the kernel gradient of an input with a large offset
        a = scale * per_channel + noise
    elif kind == "kernel":  # nearly along the standardized kernel itself
        a = scale * per_channel * ds.numpy()[None] + 1e-3 * noise
    elif kind == "both":
        a = scale * per_channel * (1 + ds.numpy()[None]) + noise
    else:
        raise ValueError(kind)
    return tf.constant(a.astype("float32"))


@pytest.mark.parametrize("kernel_shape", [(3, 3, 4, 6), (1, 1, 16, 8), (7, 7, 3, 8)])
@pytest.mark.parametrize("kind", ["mean", "kernel", "both"])
@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("path", ["bounded", "unshifted", "shifted", "xla"])
def test_ws_kernel_sq_norms_bound_the_exact_norm(monkeypatch, kernel_shape, kind, with_gain, path):
    """Against the float64 WS backward of the same float32 cotangents, gains and kernel: the bounded sums
    (``ws_norm_bounds``; each example shifted by its mean where the first pass is too loose), the first
    pass alone (a proven bound even where it cancels, just a loose one), every example through the shifted
    pass, and the centred moments that XLA runs."""
    if path == "unshifted":
        monkeypatch.setattr(ws_norm_bounds, "FAST_PATH_TOLERANCE", float("inf"))
    if path == "shifted":
        monkeypatch.setattr(ws_norm_bounds, "FAST_PATH_TOLERANCE", -1.0)
    rng = np.random.default_rng(sum(map(ord, kind)) + len(kernel_shape) + kernel_shape[0])
    w = tf.constant(rng.normal(size=kernel_shape).astype("float32"))
    ds, s, c = ws_math.ws_geometry(w, eps=1e-4)
    gain = tf.constant(rng.normal(size=kernel_shape[-1:]).astype("float32")) if with_gain else None
    a = _cotangents(kind, ds, rng)
    g = 1.0 if gain is None else gain
    norms = tf.function(ws_math.ws_kernel_sq_norms, jit_compile=path == "xla")
    got = norms(a, ds, s, c, gain=gain).numpy()
    want = tf.reduce_sum(tf.square(_ws_backward64(a, ds, s, c, g)), axis=(1, 2, 3, 4)).numpy()
    assert_never_below(np.sqrt(got), np.sqrt(want), f"{kind} {kernel_shape}")
    if kind == "mean" and path != "unshifted":
        # The mean costs no accuracy: no over-estimate worth the name either. (Along the
        # kernel, the subtraction that is left over-estimates by design.)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_only_cotangents_dominated_by_their_mean_are_summed_twice(monkeypatch):
    """Ordinary cotangents take one pass (and come within 1e-5 of the exact norm); mean-dominated ones,
    and only those examples, a second, shifted one."""
    passes = []
    staged = ws_norm_bounds._staged_sums
    monkeypatch.setattr(ws_norm_bounds, "_staged_sums", lambda t, ds: passes.append(t.shape[0]) or staged(t, ds))
    rng = np.random.default_rng(3)
    ds, s, c = ws_math.ws_geometry(tf.constant(rng.normal(size=(3, 3, 16, 8)).astype("float32")), eps=1e-4)
    a = rng.normal(size=(4, 3, 3, 16, 8))
    a[2] = np.maximum(a[2], 0.0)  # a ReLU input's kernel gradient: a mean, but not a dominant one
    for offset, want_passes in ((0.0, [4]), (1e4, [4, 1])):
        a[1] += offset
        got = ws_math.ws_kernel_sq_norms(tf.constant(a.astype("float32")), ds, s, c).numpy()
        exact = tf.reduce_sum(tf.square(_ws_backward64(a.astype("float32"), ds, s, c, 1.0)), axis=(1, 2, 3, 4)).numpy()
        assert passes == want_passes, offset
        assert np.all(got >= exact) and np.all(got <= exact * (1 + 1e-5)), (offset, got / exact - 1)
        passes.clear()


@pytest.mark.parametrize("pattern", ["one_large", "alternating", "geometric", "normal"])
def test_staged_sums_stay_within_their_error_bounds(pattern):
    """``_staged_sums`` against float64 sums, on magnitudes that make float32 summation lose the small terms."""
    rng = np.random.default_rng(len(pattern))
    shape = (3, 3, 32, 4)
    n = 3 * 3 * 32
    x = rng.normal(size=(6,) + shape)
    flat = x.reshape(6, n, 4)
    if pattern == "one_large":  # one large term leads each slab, the rest below half its ulp
        flat *= 1e-5
        flat[:, ::32] = 1e4
    elif pattern == "alternating":  # large terms that cancel, small ones that do not
        flat[:] = np.where(np.arange(n)[None, :, None] % 2 == 0, 1e6, -1e6) + flat
    elif pattern == "geometric":
        flat *= 2.0 ** rng.integers(-40, 40, size=flat.shape)
    t = flat.reshape((6,) + shape).astype("float32")
    ds = rng.normal(size=shape).astype("float32")
    s2, s1, p, e_sq, e_lin = (v.numpy() if hasattr(v, "numpy") else v
                              for v in ws_norm_bounds._staged_sums(tf.constant(t), tf.constant(ds)))
    t64, ds64 = t.astype(np.float64).reshape(6, n, 4), ds.astype(np.float64).reshape(n, 4)
    assert np.all(np.abs(s2 - (t64 ** 2).sum(1)) <= e_sq * (t64 ** 2).sum(1))
    assert np.all(np.abs(s1 - t64.sum(1)) <= e_lin * np.abs(t64).sum(1))
    assert np.all(np.abs(p - (t64 * ds64).sum(1)) <= e_lin * np.abs(t64 * ds64).sum(1))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fan_in_sum_is_exact_where_a_float32_sum_is_not(jit_compile):
    """The standardized kernel's fan-in sum (a rounding residue) in float64 outside XLA, by TwoSum under XLA."""
    rng = np.random.default_rng(13)
    for shape in [(3, 3, 4, 6), (3, 3, 64, 32), (1, 1, 16, 8), (7, 7, 3, 8)]:
        ds, _, _ = ws_math.ws_geometry(tf.constant((rng.normal(size=shape) + 5).astype("float32")), eps=1e-4)
        exact = ds.numpy().astype(np.float64).reshape(-1, shape[-1]).sum(0)
        got = tf.function(ws_math.fan_in_sum, jit_compile=jit_compile)(ds).numpy()
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=0)
        assert np.max(np.abs(tf.reduce_sum(tf.reshape(ds, [-1, shape[-1]]), 0).numpy() - exact)) > 1e-3 * np.max(
            np.abs(exact)), "a float32 sum is off by more than the float32 rounding of the result"


# --- one WS layer, every gradient path -------------------------------------------------------------------------------


def _single_ws_layer_model(kernel, strides, cin, hw, seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((hw, hw, cin))
    h = WSConv2D(6, kernel, strides=strides, name="ws")(inp)
    h = keras.layers.Activation("tanh")(h)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    m = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    m.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in m.get_weights()])
    _shrink_ws_kernels(m, 0.1)
    return m


# path -> (ghost, fold_gain, unfold); ghost with and without the gain folded in elsewhere.
SINGLE_LAYER_PATHS = {"ghost": (True, False, False), "ghost-fold": (True, True, False), "fold": (False, True, False),
                      "plain": (False, False, False), "unfold": (False, False, True)}


@pytest.mark.parametrize("path", list(SINGLE_LAYER_PATHS))
@pytest.mark.parametrize("kernel,strides", [(3, 1), (3, 2), (1, 1)])
def test_single_ws_layer_norms_never_under_estimate(exact_backward, path, kernel, strides):
    """One WS convolution straight on adversarial images (its gradient is most of each example's)."""
    ghost, fold_gain, unfold = SINGLE_LAYER_PATHS[path]
    cin, hw = 3, 8
    m = _single_ws_layer_model(kernel, strides, cin, hw, seed=kernel + strides)
    paths = dp.ws_gradient_paths(m, (2, hw, hw, cin), ghost=ghost, fold_gain=fold_gain, unfold=unfold)
    assert paths == {"ws": path.split("-")[0]}
    step = _contribution_step(m, ghost, fold_gain, unfold)
    rng = np.random.default_rng(7)
    for kind in ("normal", "offset", "channel_offsets", "near_constant", "piecewise_constant"):
        for offset in ((0.0,) if kind == "normal" else (30.0, 1e3, 3e4)):
            x = adversarial_images(kind, (hw, hw, cin), rng, offset)
            computed, true = computed_and_true_norms(step, x, _labels_against_the_logits(m, x))
            assert_never_below(computed, true, f"{kind} {offset:g}")


def test_patch_gram_centred_both_ways_on_offset_windows():
    """The Gram of the patches centred over the fan-in, both ways, on constant and near-constant windows."""
    rng = np.random.default_rng(11)
    layer = WSConv2D(4, 3, strides=1)
    layer.build((None, 6, 6, 3))
    x = (3e4 + rng.normal(size=(2, 2, 6, 6, 3)) * np.array([1.0, 1e-2, 0.0])).astype("float32")
    x[1, :, :3] = 0.0  # a constant region and a near-constant one
    p = dp.conv_patches(tf.constant(x.reshape(-1, 6, 6, 3)), layer).numpy().astype(np.float64).reshape(2, -1, 27)
    pc = p - p.mean(-1, keepdims=True)
    want = pc @ pc.transpose(0, 2, 1)
    scale = np.abs(want).max()
    for method in ("patches", "pixels"):
        gram, rows = dp.patch_gram(tf.constant(x), layer, method=method, centred=True)
        np.testing.assert_allclose(gram.numpy(), want, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(rows.numpy(), p.sum(-1), rtol=1e-6)


# --- the zoo's models ------------------------------------------------------------------------------------------------


MODELS = [("wrn_test", (8, 8, 1)), ("nf_resnet_test", (16, 16, 3)), ("nfnet_test", (16, 16, 3))]


def _has_ghost_layers(model):
    """Whether ``ghost=True`` changes anything: only plain (ungrouped) ``WSConv2D`` layers can go ghost."""
    return any(type(layer) is WSConv2D and layer.groups == 1
               for layer in model._flatten_layers(include_self=False, recursive=True))


def _zoo_model(name, shape):
    keras.utils.set_random_seed(2)
    m = dp_zoo.create_model(name, num_classes=5, input_shape=shape)
    rng = np.random.default_rng(2)
    m.set_weights([w + rng.normal(scale=0.2, size=w.shape).astype("float32") for w in m.get_weights()])
    _shrink_ws_kernels(m, 0.03)
    return m


def _set_skip_group_norm_offsets(model, offset):
    """The GroupNorms in front of the 1x1 projections get one large offset for every channel."""
    for v in model.weights:
        if "skip_gn" in v.path and v.path.endswith("beta"):
            v.assign(np.full(v.shape, offset, np.float32))


# Only the WRN has ghost-eligible layers (plain WSConv2D); for the others ghost=True would run
# exactly what ghost=False does, so that case is not generated (the test checks the premise).
GHOST_MODELS = ("wrn_test",)
# Each case traces a whole step (15-25 s on 2 cores). The quick set keeps one case per model that
# covers each path at least once (ghost and fold on the WRN, neither on the WRN, fold on the
# NF-ResNet); the other cases, the NFNet's included, run in the slow set.
QUICK_ZOO_CASES = {("wrn_test", True, True), ("wrn_test", False, False), ("nf_resnet_test", False, True)}
ZOO_CASES = [pytest.param(name, shape, ghost, fold_gain,
                          marks=[] if (name, ghost, fold_gain) in QUICK_ZOO_CASES else [pytest.mark.slow],
                          id=f"{name}-ghost={ghost}-fold={fold_gain}")
             for name, shape in MODELS for ghost in ((True, False) if name in GHOST_MODELS else (False,))
             for fold_gain in (True, False)]


@pytest.mark.parametrize("name,shape,ghost,fold_gain", ZOO_CASES)
def test_zoo_model_norms_never_under_estimate(exact_backward, name, shape, ghost, fold_gain):
    """WRN, NF-ResNet and NFNet on adversarial images (and the WRN with large GroupNorm offsets)."""
    m = _zoo_model(name, shape)
    assert _has_ghost_layers(m) == (name in GHOST_MODELS), "update GHOST_MODELS: the generated cases depend on it"
    _assert_adversarial_norms(m, name, shape, _contribution_step(m, ghost, fold_gain))


@pytest.mark.slow  # one more whole step traced (15-25 s on 2 cores)
def test_unfolded_kernel_gradient_norms_never_under_estimate(exact_backward):
    """The opt-in unfold path (every ghost-capable layer's per-example kernel gradients from patches)."""
    name, shape = next((n, s) for n, s in MODELS if n in GHOST_MODELS)
    m = _zoo_model(name, shape)
    assert set(dp.ws_gradient_paths(m, (2,) + tuple(shape), ghost=False, unfold=True).values()) >= {"unfold"}
    _assert_adversarial_norms(m, name, shape, _contribution_step(m, False, False, unfold=True))


def _assert_adversarial_norms(m, name, shape, step):
    rng = np.random.default_rng(3)
    cases = [("offset", 1e3), ("offset", 3e4), ("channel_offsets", 3e4), ("near_constant", 3e4),
             ("piecewise_constant", 3e4)]
    if name == "wrn_test":
        cases += [("group_norm", 30.0), ("group_norm", 1e3), ("group_norm", 3e4)]
    weights = m.get_weights()
    for kind, offset in cases:
        m.set_weights(weights)
        if kind == "group_norm":
            _set_skip_group_norm_offsets(m, offset)
            x = adversarial_images("normal", shape, rng, 0.0)
        else:
            x = adversarial_images(kind, shape, rng, offset)
        computed, true = computed_and_true_norms(step, x, _labels_against_the_logits(m, x))
        assert_never_below(computed, true, f"{name} {kind} {offset:g}")


def _float64_copy(model, name, shape):
    keras.config.set_dtype_policy("float64")
    try:
        m64 = dp_zoo.create_model(name, num_classes=5, input_shape=shape)
    finally:
        keras.config.set_dtype_policy("float32")
    m64.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return m64


def _float64_norms(m64, x, y):
    out = []
    for i in range(x.shape[0]):
        with tf.GradientTape() as tape:
            logits = m64(tf.constant(x[i], tf.float64), training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                np.repeat(y[i], x.shape[1]), logits, from_logits=True))
        out.append(np.sqrt(sum(np.sum(np.square(g.numpy())) for g in tape.gradient(loss, m64.trainable_variables))))
    return np.array(out)


@pytest.mark.parametrize("name,shape", [pytest.param(*MODELS[0], marks=pytest.mark.slow), MODELS[1]])
def test_norms_match_a_float64_model_on_ordinary_inputs(name, shape):
    """On ordinary images the float64 model is the reference. (The NFNet takes a minute to trace twice
    more; ``tests/dp/test_clipping.py`` compares it with the naive per-example loop.)"""
    m = _zoo_model(name, shape)
    x = adversarial_images("normal", shape, np.random.default_rng(5), 0.0)
    y = _labels_against_the_logits(m, x)
    true = _float64_norms(_float64_copy(m, name, shape), x, y)
    for ghost in ((True, False) if _has_ghost_layers(m) else (False,)):
        for fold_gain in (True, False):
            _, computed = dp.clipped_grad_sum(m, x, y, l2_clip=1.0, ghost=ghost, fold_gain=fold_gain)
            assert_never_below(computed.numpy(), true, f"{name} ghost={ghost} fold_gain={fold_gain}")
            np.testing.assert_allclose(computed.numpy(), true, rtol=1e-5)
