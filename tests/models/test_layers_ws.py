"""WSConv2D: the standardized kernel, the numpy reference, config round trip."""

import numpy as np
import keras
import tensorflow as tf

from dp_zoo.models.ws_conv import WSConv2D


def _reference_kernel(raw, gain, eps=1e-4):
    # jax_privacy's formula: (w - mean) * gain / sqrt(max(fan_in * var, eps)),
    # mean/var per output channel over (kh, kw, cin).
    fan_in = np.prod(raw.shape[:-1])
    mean = raw.mean(axis=(0, 1, 2), keepdims=True)
    var = raw.var(axis=(0, 1, 2), keepdims=True)
    return (raw - mean) * gain / np.sqrt(np.maximum(fan_in * var, eps))


def _built_layer(**kw):
    layer = WSConv2D(6, 3, **kw)
    layer.build((None, 5, 5, 4))
    rng = np.random.default_rng(0)
    # Non-trivial raw kernel, gain and bias so that each of them shows.
    layer.kernel.assign(rng.normal(0.3, 2.0, size=layer.kernel.shape).astype("float32"))
    layer.gain.assign(rng.uniform(0.5, 2.0, size=(6,)).astype("float32"))
    layer.bias.assign(rng.normal(size=(6,)).astype("float32"))
    return layer


def test_standardized_kernel_has_zero_mean_and_unit_fan_in_variance():
    layer = WSConv2D(6, 3)
    layer.build((None, 5, 5, 4))  # gain is 1 at init
    w = keras.ops.convert_to_numpy(layer.standardized_kernel()).reshape(-1, 6)
    fan_in = 3 * 3 * 4
    np.testing.assert_allclose(w.mean(0), 0, atol=1e-6)
    # Scaled WS: variance 1/fan_in per output channel, i.e. unit variance
    # of the fan-in-scaled kernel (so activations keep unit variance).
    np.testing.assert_allclose(w.var(0) * fan_in, 1, rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.gain), 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.bias), 0)


def test_output_matches_numpy_reference():
    layer = _built_layer(strides=2)
    x = np.random.default_rng(1).normal(size=(2, 5, 5, 4)).astype("float32")
    raw = keras.ops.convert_to_numpy(layer.kernel)
    gain = keras.ops.convert_to_numpy(layer.gain)
    bias = keras.ops.convert_to_numpy(layer.bias)
    ref_w = _reference_kernel(raw, gain).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.standardized_kernel()), ref_w, rtol=1e-5, atol=1e-6
    )
    ref = tf.nn.conv2d(x, ref_w, 2, "SAME").numpy() + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), ref, rtol=1e-4, atol=1e-5)


def test_eps_floors_a_constant_kernel():
    layer = WSConv2D(2, 1)
    layer.build((None, 3, 3, 2))
    layer.kernel.assign(np.ones(layer.kernel.shape, "float32"))
    y = keras.ops.convert_to_numpy(layer(np.ones((1, 3, 3, 2), "float32")))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, 0, atol=1e-6)


def test_get_config_round_trip():
    layer = _built_layer(strides=2, eps=1e-3, name="ws")
    cfg = layer.get_config()
    assert cfg["eps"] == 1e-3 and cfg["filters"] == 6 and cfg["padding"] == "same"
    clone = WSConv2D.from_config(cfg)
    assert clone.get_config() == cfg
    clone.build((None, 5, 5, 4))
    assert len(clone.weights) == 3  # kernel, bias, gain
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 4)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(layer(x)), rtol=1e-6
    )
    # Keras' generic (de)serialization finds the registered class.
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(again, WSConv2D) and again.eps == 1e-3


import pytest

from dp_zoo.models.ws_math import _standardize_reference, standardize_kernel


@pytest.mark.parametrize("eps_mode", ["deepmind", "timm"])
@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_closed_form_ws_backward_equals_autodiff(eps_mode, scale):
    """The hand-written WS backward (used per example by DP-SGD) equals autodiff.

    scale 1e-4 puts fan_in * var below eps for the deepmind floor, and the
    constant last channel is floored at any scale: both branches are checked.
    """
    rng = np.random.default_rng(3)
    w = rng.normal(0.2, 1.0, size=(3, 3, 5, 7)) * scale
    w[..., -1] = 0.5
    w = tf.constant(w.astype("float32"))
    g = tf.constant(rng.uniform(0.5, 2.0, size=(7,)).astype("float32"))
    # A batch of cotangents, as under per-example vectorization.
    u = tf.constant(rng.normal(size=(4, 3, 3, 5, 7)).astype("float32"))
    results = []
    for fn in (standardize_kernel, _standardize_reference):
        def vjp(ui):
            with tf.GradientTape() as tape:
                tape.watch([w, g])
                y = fn(w, g, eps=1e-4, eps_mode=eps_mode)
            return [y] + tape.gradient(y, [w, g], output_gradients=ui)
        results.append(tf.vectorized_map(vjp, u))
    for got, want in zip(*results):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))
