"""WS-WideResNet: structure, options, serialization."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import dp_zoo
from dp_zoo.models.ws_conv import WSConv2D
from dp_zoo.models.wide_resnet import WideResNetConfig

def _count(model, cls):
    return sum(isinstance(l, cls) for l in model.layers)


# Published parameter counts (built models, every variant): test_contract.py.


def test_structure_follows_jax_privacy():
    m = dp_zoo.create_model("wrn16_4", num_classes=10)
    n = 2  # (16 - 4) / 6 blocks per stage
    # stem + 2 per block + one 1x1 projection per stage.
    assert _count(m, WSConv2D) == 1 + 3 * 2 * n + 3
    # 2 per block + one per projection + head.
    assert _count(m, keras.layers.GroupNormalization) == 3 * 2 * n + 3 + 1
    assert not any("batch" in type(l).__name__.lower() for l in m.layers)
    proj = [l for l in m.layers if l.name.endswith("_skip_conv")]
    assert [l.kernel_size for l in proj] == [(1, 1)] * 3
    assert [l.strides for l in proj] == [(1, 1), (2, 2), (2, 2)]
    assert [l.filters for l in proj] == [64, 128, 256]
    assert m.get_layer("stem_conv").filters == 16
    assert m.get_layer("logits").units == 10
    # Projection on stage 1 even when the channels do not change (width 1).
    d = dp_zoo.create_model("wrn_digits", num_classes=10)
    assert d.get_layer("stage1_block1_skip_conv").filters == 16


@pytest.mark.parametrize("name", ["wrn16_4", "wrn_test"])
def test_scalenorm_adds_one_groupnorm_per_block(name):
    plain = dp_zoo.create_model(name, num_classes=10)
    sn = dp_zoo.create_model(name, num_classes=10, scale_norm=True)
    blocks = 3 * WideResNetConfig(depth={"wrn16_4": 16, "wrn_test": 10}[name]).blocks_per_stage
    gn = keras.layers.GroupNormalization
    assert _count(sn, gn) - _count(plain, gn) == blocks
    assert sum(l.name.endswith("_scalenorm") for l in sn.layers) == blocks


def test_overrides_and_options():
    m = dp_zoo.create_model(
        "wrn_test", num_classes=3, depth=16, width=2, groups=4, activation="gelu",
        dropout_rate=0.3, skip_init=True,
    )
    assert sum(isinstance(l, keras.layers.Dropout) for l in m.layers) == 1
    assert m.get_layer("stage3_block2_conv2").filters == 4 * 2 * 4
    assert m.get_layer("head_act").activation is keras.activations.gelu
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    assert m(x).shape == (2, 3)
    # SkipInit: one zero-initialised scalar per block, so every residual
    # branch starts switched off.
    gains = [l for l in m.layers if l.name.endswith("_skip_init")]
    assert len(gains) == 3 * 2
    assert all(float(keras.ops.convert_to_numpy(l.gain)[0]) == 0.0 for l in gains)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNetConfig(depth=12)
    with pytest.raises(ValueError, match="groups"):
        WideResNetConfig(width=1, groups=5)
    with pytest.raises(ValueError, match="dropout_rate"):
        WideResNetConfig(dropout_rate=1.0)
    with pytest.raises(ValueError, match="activation"):
        WideResNetConfig(activation="nope")


@pytest.mark.parametrize(
    "name,shape,kw",
    [("wrn_test", (8, 8, 1), {"scale_norm": True, "skip_init": True}),
     ("wrn_test", (32, 32, 3), {}),
     ("wrn_digits", (8, 8, 1), {})],
)
def test_output_shape(name, shape, kw):
    m = dp_zoo.create_model(name, num_classes=7, input_shape=shape, **kw)
    assert m.name == name
    assert m.input_shape == (None,) + shape
    x = np.zeros((2,) + shape, "float32")
    assert tuple(m(x).shape) == (2, 7)


def test_digits_model_is_small():
    m = dp_zoo.create_model("wrn_digits", num_classes=10)
    assert m.input_shape == (None, 8, 8, 1)
    assert m.count_params() * 4 < 5e6


def test_mnist_model_is_a_half_width_wrn10_for_28x28():
    m = dp_zoo.create_model("wrn_mnist", num_classes=10)
    assert m.input_shape == (None, 28, 28, 1)
    convs = [l.filters for l in m.layers if l.name.endswith("_conv2")]
    assert m.get_layer("stem_conv").filters == 8 and convs == [8, 16, 32]  # one block per stage
    assert 15_000 < m.count_params() < 25_000


@pytest.mark.parametrize("name", ["wrn_test", "wrn_digits"])
def test_serialization_round_trips(name, tmp_path):
    m = dp_zoo.create_model(name, num_classes=10, scale_norm=True, skip_init=True)
    # Non-trivial weights so that a lost weight (e.g. a WS gain) would show.
    rng = np.random.default_rng(1)
    m.set_weights([rng.normal(1.0, 0.2, size=w.shape).astype("float32") for w in m.get_weights()])
    x = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    ref = keras.ops.convert_to_numpy(m(x))

    clone = keras.Model.from_config(m.get_config())
    clone.set_weights(m.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), ref, rtol=1e-5, atol=1e-6)

    m.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), ref, rtol=1e-5, atol=1e-6)

    m.export(str(tmp_path / "sm"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(served.serve(x).numpy(), ref, rtol=1e-5, atol=1e-6)
