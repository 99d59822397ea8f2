"""WS-WideResNet: published parameter counts, layer math, serialization."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import dp_zoo
from dp_zoo.models.layers import WSConv2D
from dp_zoo.models.wide_resnet import WideResNetConfig

# De et al. 2022 / Zagoruyko & Komodakis 2016 (DESIGN.md §5), CIFAR-10 heads.
PUBLISHED = {"wrn16_4": 2.75e6, "wrn40_4": 8.9e6, "wrn28_10": 36.5e6}


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_parameter_counts_match_published(name, count):
    m = dp_zoo.create_model(name, num_classes=10, input_shape=(32, 32, 3))
    assert abs(m.count_params() - count) / count < 0.01


def test_scalenorm_adds_one_groupnorm_per_block():
    plain = dp_zoo.create_model("wrn16_4", num_classes=10)
    sn = dp_zoo.create_model("wrn16_4_scalenorm", num_classes=10)
    gn = lambda m: sum(isinstance(l, keras.layers.GroupNormalization) for l in m.layers)
    assert gn(sn) - gn(plain) == 3 * 2  # 3 stages x (16-4)/6 blocks


def test_ws_kernel_is_standardized_and_matches_numpy():
    layer = WSConv2D(6, 3, kernel_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype("float32")
    y = layer(x)
    w = keras.ops.convert_to_numpy(layer.standardized_kernel())
    fan_in = 3 * 3 * 4
    np.testing.assert_allclose(w.reshape(-1, 6).mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(w.reshape(-1, 6).var(0) * fan_in, 1, rtol=1e-4)
    raw = keras.ops.convert_to_numpy(layer.kernel)
    ref_w = (raw - raw.mean((0, 1, 2))) / np.sqrt(np.maximum(raw.var((0, 1, 2)) * fan_in, 1e-4))
    ref = tf.nn.conv2d(x, ref_w.astype("float32"), 1, "SAME").numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), ref, rtol=1e-4, atol=1e-5)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNetConfig(depth=12)
    with pytest.raises(ValueError, match="groups"):
        WideResNetConfig(width=1, groups=5)


@pytest.mark.parametrize("name", ["wrn_test", "wrn_digits"])
def test_serialization_round_trips(name, tmp_path):
    m = dp_zoo.create_model(name, num_classes=10, scale_norm=True)
    # Non-trivial weights so that a lost weight would show.
    rng = np.random.default_rng(1)
    m.set_weights([rng.normal(scale=0.1, size=w.shape).astype("float32") for w in m.get_weights()])
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


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="wrn16_4"):
        dp_zoo.create_model("wrn16_5", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        dp_zoo.create_model("wrn_test", num_classes=0)
    with pytest.raises(ValueError, match="input_shape"):
        dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8))
    assert {"wrn16_4", "wrn40_4", "wrn28_10", "wrn_digits"} <= set(dp_zoo.list_architectures())
