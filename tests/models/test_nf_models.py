"""NF-ResNets and NFNets: published sizes, layer math, serialization."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import dp_zoo
from dp_zoo.models import nf_resnet, nfnet
from dp_zoo.models.layers import (
    NONLINEARITY_GAMMA, ScaledActivation, ScaledWSConv2D, SkipInitGain, SqueezeExcite, StochasticDepth,
)

# DESIGN.md §5 (Brock et al. 2021; timm).
PUBLISHED = {"nf_resnet50": 25.6e6, "nfnet_f0": 71.5e6, "nfnet_f1": 132.6e6, "nfnet_f2": 193.8e6,
             "nfnet_f3": 254.9e6}


def cfg_of(name):
    return {**nf_resnet.VARIANTS, **nfnet.VARIANTS}[name]


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_parameter_counts_match_published(name, count):
    # Counted from the configuration: F3 would need ~1 GB to materialise.
    n = nf_resnet.param_count(cfg_of(name), num_classes=1000)
    assert abs(n - count) / count < 0.01


@pytest.mark.parametrize("name", ["nf_resnet50", "nfnet_f0", "nf_resnet_test", "nfnet_test"])
def test_config_count_equals_built_model(name):
    m = dp_zoo.create_model(name, num_classes=1000 if "test" not in name else 7, input_shape=(32, 32, 3))
    assert m.count_params() == nf_resnet.param_count(cfg_of(name), num_classes=m.output_shape[-1])


@pytest.mark.parametrize("eps_mode", ["timm", "deepmind"])
def test_scaled_ws_conv_matches_numpy(eps_mode):
    eps = 1e-5 if eps_mode == "timm" else 1e-4
    layer = ScaledWSConv2D(6, 3, strides=2, padding=1, groups=2, gamma=1.7, eps=eps, eps_mode=eps_mode)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    layer.gain.assign(rng.uniform(0.5, 1.5, size=6).astype("float32"))
    w = layer.kernel.numpy()
    fan_in = 3 * 3 * 2
    if eps_mode == "timm":
        inv = 1 / np.sqrt(w.var((0, 1, 2)) + eps) / np.sqrt(fan_in)
    else:
        inv = 1 / np.sqrt(np.maximum(w.var((0, 1, 2)) * fan_in, eps))
    ref_w = (w - w.mean((0, 1, 2))) * inv * layer.gain.numpy() * 1.7
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    ref = tf.nn.convolution(xp, ref_w.astype("float32"), strides=2, padding="VALID").numpy()
    np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_scaled_activation_gains_preserve_variance():
    x = np.random.default_rng(0).normal(size=200_000).astype("float32")
    for act in ("relu", "gelu"):
        y = ScaledActivation(act)(x).numpy()
        assert abs(y.var() - 1.0) < 0.02  # the point of the gains
    assert ScaledActivation("relu").gamma == NONLINEARITY_GAMMA["relu"] == pytest.approx(1.7139588594436646)
    assert ScaledActivation("gelu").gamma == pytest.approx(1.7015043497085571)


def test_stochastic_depth_is_per_example_and_identity_at_inference():
    layer = StochasticDepth(0.5, seed=0)
    x = np.ones((64, 2, 2, 3), "float32")
    y = layer(x, training=True).numpy()
    kept = y.reshape(64, -1).max(1) > 0
    assert 10 < kept.sum() < 54  # decisions differ across the batch
    np.testing.assert_allclose(y[kept], 2.0)  # kept rows rescaled by 1/keep
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    # Vectorized per example (a batch of one per call), each example still draws its own decision.
    f = tf.function(lambda t: tf.vectorized_map(lambda e: layer(e[None], training=True)[0], t))
    z = f(tf.constant(x)).numpy().reshape(64, -1).max(1) > 0
    assert 0 < z.sum() < 64


def test_squeeze_excite_and_skipinit():
    se = SqueezeExcite(4, gain=2.0)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 8)).astype("float32")
    y = se(x).numpy()
    s = x.mean((1, 2), keepdims=True)
    h = np.maximum(np.einsum("bijc,cd->bijd", s, se.fc1.kernel.numpy()[0, 0]) + se.fc1.bias.numpy(), 0)
    g = 1 / (1 + np.exp(-(np.einsum("bijc,cd->bijd", h, se.fc2.kernel.numpy()[0, 0]) + se.fc2.bias.numpy())))
    np.testing.assert_allclose(y, 2.0 * x * g, rtol=1e-5, atol=1e-6)
    assert float(SkipInitGain()(x).numpy().max()) == 0.0


@pytest.mark.parametrize("name", ["nf_resnet_test", "nfnet_test"])
def test_serialization_round_trips(name, tmp_path):
    m = dp_zoo.create_model(name, num_classes=5)
    rng = np.random.default_rng(1)
    m.set_weights([(w + rng.normal(scale=0.2, size=w.shape)).astype("float32") for w in m.get_weights()])
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    ref = m(x).numpy()
    clone = keras.Model.from_config(m.get_config())
    clone.set_weights(m.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), ref, rtol=1e-5, atol=1e-6)
    m.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras")(x).numpy(), ref, rtol=1e-5, atol=1e-6)
    m.export(str(tmp_path / "sm"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference while calling it
    np.testing.assert_allclose(served.serve(x).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_nf_models_train_with_dp_sgd():
    """The per-example machinery works on NF blocks (no cross-example layers)."""
    from dp_zoo.train import dp_sgd

    m = dp_zoo.create_model("nfnet_test", num_classes=3)
    x = np.random.default_rng(0).normal(size=(4, 2, 32, 32, 3)).astype("float32")
    g, norms = dp_sgd.clipped_grad_sum(m, x, np.array([0, 1, 2, 0]), l2_clip=0.1)
    assert np.sqrt(sum(float(tf.reduce_sum(t**2)) for t in g)) <= 4 * 0.1 + 1e-5
    assert norms.shape == (4,)


@pytest.mark.parametrize("branches", ["init", "active"])
def test_nf_resnet50_signal_propagation_at_init(branches):
    """Mean squared activation of every stage output stays in [0.5, 2] (Brock et al. 2021a)."""
    m = dp_zoo.create_model("nf_resnet50", num_classes=10, input_shape=(64, 64, 3))
    if branches == "active":  # switch the SkipInit gains on: residual branches contribute
        for layer in m.layers:
            if isinstance(layer, SkipInitGain):
                layer.gain.assign(1.0)
    outs = [m.get_layer(f"stage{s}_block{d}_add").output for s, d in [(1, 3), (2, 4), (3, 6), (4, 3)]]
    x = np.random.default_rng(0).normal(size=(8, 64, 64, 3)).astype("float32")
    for o in keras.Model(m.input, outs)(x):
        assert 0.5 <= float(np.mean(o.numpy() ** 2)) <= 2.0


def test_conventions_are_explicit_fields():
    dm = nf_resnet.VARIANTS["nf_resnet50"]
    assert (dm.same_padding, dm.skipinit, dm.gamma_in_act, dm.eps_mode) == (True, True, True, "deepmind")
    timm_like = dp_zoo.create_model("nf_resnet_test", num_classes=3, **nf_resnet.TIMM_CONVENTIONS["nf_resnet"])
    conv = timm_like.get_layer("stage1_block1_conv1")
    assert conv.padding == 0 and conv.eps_mode == "timm"
    assert not any(isinstance(l, SkipInitGain) for l in timm_like.layers)
