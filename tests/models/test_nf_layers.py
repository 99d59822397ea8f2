"""NF layers (Brock et al. 2021): each formula against numpy, serialization, bad arguments."""

import math

import numpy as np
import pytest
import keras
import tensorflow as tf

from dp_zoo.models.layers import NONLINEARITY_GAMMA, ScaledActivation, SkipInitGain, SqueezeExcite, StochasticDepth
from dp_zoo.models.ws_conv import ScaledWSConv2D


def np_conv(x, w, stride, pads, groups):
    """Direct grouped convolution, NHWC x HWIO, explicit (top, bottom, left, right) zero padding."""
    t, b, l, r = pads
    x = np.pad(x, [(0, 0), (t, b), (l, r), (0, 0)])
    kh, kw, cin_g, cout = w.shape
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    cout_g = cout // groups
    out = np.zeros((x.shape[0], oh, ow, cout), np.float64)
    for g in range(groups):
        xg = x[..., g * cin_g:(g + 1) * cin_g]
        wg = w[..., g * cout_g:(g + 1) * cout_g]
        for i in range(oh):
            for j in range(ow):
                patch = xg[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
                out[:, i, j, g * cout_g:(g + 1) * cout_g] = np.einsum("nhwc,hwco->no", patch, wg)
    return out


def tf_same_pads(size, k, s):
    """TensorFlow SAME padding (timm's ``pad_same``): the odd pixel goes at the end."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def np_standardize(w, gain, gamma, eps, eps_mode):
    fan_in = np.prod(w.shape[:3])
    mean, var = w.mean((0, 1, 2)), w.var((0, 1, 2))
    if eps_mode == "timm":  # timm's ScaledStdConv2d: batch_norm over the fan-in, eps inside the sqrt
        inv = 1 / np.sqrt(var + eps) / np.sqrt(fan_in)
    else:  # DeepMind's nfnets: rsqrt(max(fan_in * var, eps))
        inv = 1 / np.sqrt(np.maximum(var * fan_in, eps))
    return (w - mean) * inv * gain * gamma


@pytest.mark.parametrize("eps_mode", ["timm", "deepmind"])
@pytest.mark.parametrize("padding,stride,size", [("same", 2, 8), ("same", 2, 9), ("same", 1, 7), (1, 2, 9),
                                                 (0, 1, 6), ("valid", 2, 9)])
def test_scaled_ws_conv_matches_numpy(eps_mode, padding, stride, size):
    eps = 1e-5 if eps_mode == "timm" else 1e-4
    layer = ScaledWSConv2D(6, 3, strides=stride, padding=padding, groups=2, gamma=1.7, eps=eps, eps_mode=eps_mode)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 4)).astype("float32")
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    layer.gain.assign(rng.uniform(0.5, 1.5, size=6).astype("float32"))
    layer.bias.assign(rng.normal(size=6).astype("float32"))
    w = np_standardize(layer.kernel.numpy().astype(np.float64), layer.gain.numpy(), 1.7, eps, eps_mode)
    if padding == "same":
        pads = tf_same_pads(size, 3, stride) * 2
    else:
        p = 0 if padding == "valid" else padding
        pads = (p, p, p, p)
    ref = np_conv(x.astype(np.float64), w, stride, pads, groups=2) + layer.bias.numpy()
    got = layer(x).numpy()
    assert got.shape == ref.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_scaled_ws_kernel_statistics_and_init():
    layer = ScaledWSConv2D(16, 3, gamma=2.0, gain_init=0.5, eps=1e-12)
    layer.build((None, 8, 8, 5))
    w = layer.standardized_kernel().numpy()
    fan_in = 3 * 3 * 5
    np.testing.assert_allclose(w.mean((0, 1, 2)), 0.0, atol=1e-6)
    # Standardized kernel: variance (gain * gamma)^2 / fan_in per output channel.
    np.testing.assert_allclose(w.var((0, 1, 2)), (0.5 * 2.0) ** 2 / fan_in, rtol=1e-4)
    np.testing.assert_allclose(layer.gain.numpy(), 0.5)
    np.testing.assert_allclose(layer.bias.numpy(), 0.0)
    # Raw kernel ~ N(0, 1/fan_in), as timm's kaiming_normal_(mode="fan_in", nonlinearity="linear").
    big = ScaledWSConv2D(256, 3)
    big.build((None, 8, 8, 64))
    assert abs(big.kernel.numpy().std() * math.sqrt(3 * 3 * 64) - 1.0) < 0.02
    # A constant kernel (zero variance) stays finite: epsilon floors the variance.
    for mode in ("timm", "deepmind"):
        c = ScaledWSConv2D(2, 1, eps_mode=mode, eps=1e-4)
        c.build((None, 4, 4, 3))
        c.kernel.assign(np.ones(c.kernel.shape, "float32"))
        assert np.all(np.isfinite(c.standardized_kernel().numpy()))


def test_scaled_activations_match_numpy_and_preserve_variance():
    x = np.random.default_rng(0).normal(size=200_000).astype("float32")
    erf = np.vectorize(math.erf)
    xs = x[:2000].astype(np.float64)
    refs = {
        "relu": np.maximum(xs, 0),
        "gelu": 0.5 * xs * (1 + erf(xs / math.sqrt(2))),  # exact (erf) GELU, as torch's nn.GELU
        "silu": xs / (1 + np.exp(-xs)),
        "identity": xs,
    }
    for act, ref in refs.items():
        layer = ScaledActivation(act)
        np.testing.assert_allclose(layer(x[:2000]).numpy(), NONLINEARITY_GAMMA[act] * ref, rtol=1e-5, atol=1e-6)
        # The point of the gains: unit-Gaussian inputs give unit-variance outputs.
        assert abs(float(np.var(layer(x).numpy())) - 1.0) < 0.02, act
    assert NONLINEARITY_GAMMA["relu"] == pytest.approx(1.7139588594436646, abs=1e-12)
    assert NONLINEARITY_GAMMA["gelu"] == pytest.approx(1.7015043497085571, abs=1e-12)
    np.testing.assert_allclose(ScaledActivation("relu", gamma=3.0)(xs).numpy(), 3.0 * refs["relu"], rtol=1e-6)


def test_skipinit_gain_is_a_zero_initialised_trainable_scalar():
    layer = SkipInitGain()
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
    np.testing.assert_array_equal(layer(x).numpy(), 0.0)
    assert layer.gain.shape == () and layer.gain.trainable
    assert [v.name for v in layer.trainable_variables] == ["gain"]
    layer.gain.assign(0.3)
    np.testing.assert_allclose(layer(x).numpy(), 0.3 * x, rtol=1e-6)
    # jax_privacy's WideResNets store the scalar with shape [1]: same product.
    wrn_like = SkipInitGain(0.3, shape=(1,))
    np.testing.assert_allclose(wrn_like(x).numpy(), 0.3 * x, rtol=1e-6)
    assert wrn_like.gain.shape == (1,)
    with pytest.raises(ValueError, match="one scalar"):
        SkipInitGain(shape=(2,))


def test_squeeze_excite_matches_numpy():
    se = SqueezeExcite(4, gain=2.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 8)).astype("float32")
    se.build(x.shape)
    for v in se.weights:  # non-zero biases, so every term is exercised
        v.assign(rng.normal(scale=0.5, size=v.shape).astype("float32"))
    s = x.mean((1, 2))  # squeeze: global average per example
    h = np.maximum(s @ se.fc1.kernel.numpy()[0, 0] + se.fc1.bias.numpy(), 0)
    g = 1 / (1 + np.exp(-(h @ se.fc2.kernel.numpy()[0, 0] + se.fc2.bias.numpy())))
    # NFNets multiply the gated output by 2 so that sigmoid(~0) = 0.5 keeps the variance.
    np.testing.assert_allclose(se(x).numpy(), 2.0 * x * g[:, None, None, :], rtol=1e-5, atol=1e-6)
    assert len(se.trainable_variables) == 4
    # Per example: one example's output does not depend on another's.
    np.testing.assert_allclose(se(x[:1]).numpy(), se(x).numpy()[:1], rtol=1e-6)


def test_stochastic_depth_is_per_example_and_identity_at_inference():
    layer = StochasticDepth(0.5, seed=0)
    x = np.ones((64, 2, 2, 3), "float32")
    y = layer(x, training=True).numpy()
    rows = y.reshape(64, -1)
    kept = rows.max(1) > 0
    assert 10 < kept.sum() < 54  # decisions differ across the batch
    assert np.all((rows == 0).all(1) | (rows == 2.0).all(1))  # whole examples dropped or kept
    np.testing.assert_allclose(y[kept], 2.0)  # kept rows rescaled by 1 / keep_prob
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    np.testing.assert_array_equal(layer(x).numpy(), x)  # inference by default
    np.testing.assert_array_equal(StochasticDepth(0.0)(x, training=True).numpy(), x)
    # Vectorized per example (a batch of one per call, as the per-example gradient code does):
    # every example still draws its own decision.
    f = tf.function(lambda t: tf.vectorized_map(lambda e: layer(e[None], training=True)[0], t))
    z = f(tf.constant(x)).numpy().reshape(64, -1)
    assert np.all((z == 0).all(1) | (z == 2.0).all(1))
    assert 10 < (z.max(1) > 0).sum() < 54
    # Expected value preserved: the mean over many draws is ~ the input.
    big = np.ones((20_000, 1, 1, 1), "float32")
    assert abs(float(StochasticDepth(0.2)(big, training=True).numpy().mean()) - 1.0) < 0.03


def _round_trip(layer, x):
    """from_config(get_config()) gives the same config and, with the same weights, the same outputs."""
    y = layer(x).numpy()
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), y, rtol=1e-6, atol=1e-7)
    # Registered for .keras files, under the dp_zoo package.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


@pytest.mark.parametrize("make", [
    lambda: ScaledWSConv2D(6, 3, strides=2, padding="same", groups=2, gamma=1.3, eps=1e-5, gain_init=0.0,
                           eps_mode="timm", use_bias=False, name="c"),
    lambda: ScaledWSConv2D(4, 1, padding=0, eps=1e-4, eps_mode="deepmind"),
    lambda: ScaledActivation("gelu"),
    lambda: ScaledActivation("relu", gamma=2.5),
    lambda: SkipInitGain(0.25),
    lambda: SkipInitGain(0.25, shape=(1,)),
    lambda: SqueezeExcite(2, gain=2.0),
    lambda: StochasticDepth(0.3, seed=7),
])
def test_get_config_round_trips(make):
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    _round_trip(make(), x)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown activation 'tanh'"):
        ScaledActivation("tanh")
    with pytest.raises(ValueError, match="eps_mode"):
        ScaledWSConv2D(4, 3, eps_mode="torch")
    with pytest.raises(ValueError, match="groups=3"):
        ScaledWSConv2D(6, 3, groups=3).build((None, 8, 8, 4))
