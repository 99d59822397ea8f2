"""NF-ResNets and NFNets: serialization, signal propagation, conventions, stochastic depth.

The layers alone are tested in test_nf_layers.py."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import dp_zoo
from dp_zoo.models import nf_resnet
from dp_zoo.models.layers import SkipInitGain, StochasticDepth

# Published parameter counts (built models, every variant): test_contract.py.


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
    np.testing.assert_allclose(served.serve(x).numpy(), ref, rtol=1e-5, atol=1e-5)  # graph-optimised SavedModel vs eager: float32 op-order differences


def test_nf_models_train_with_dp_sgd():
    """The per-example machinery works on NF blocks (no cross-example layers)."""
    from dp_zoo import dp

    m = dp_zoo.create_model("nfnet_test", num_classes=3)
    x = np.random.default_rng(0).normal(size=(4, 2, 32, 32, 3)).astype("float32")
    g, norms = dp.clipped_grad_sum(m, x, np.array([0, 1, 2, 0]), l2_clip=0.1)
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
    assert (dm.same_padding, dm.skip_init, dm.gamma_in_act, dm.eps_mode) == (True, True, True, "deepmind")
    timm_like = dp_zoo.create_model("nf_resnet_test", num_classes=3, **nf_resnet.TIMM_CONVENTIONS["nf_resnet"])
    conv = timm_like.get_layer("stage1_block1_conv1")
    assert conv.padding == 0 and conv.eps_mode == "timm"
    assert not any(isinstance(l, SkipInitGain) for l in timm_like.layers)


@pytest.mark.parametrize("schedule,denominator", [("deepmind", 4), ("timm", 3)])
def test_drop_path_rate_grows_linearly_per_block(schedule, denominator):
    """Block i of n drops with rate * i / n (DeepMind's nfnets) or rate * i / (n - 1) (timm)."""
    m = dp_zoo.create_model("nfnet_test", num_classes=3, drop_path_rate=0.3, drop_path_schedule=schedule)
    rates = {l.name: l.rate for l in m.layers if isinstance(l, StochasticDepth)}
    # The first block's rate is 0: no layer there at all.
    assert rates == pytest.approx({f"stage{i + 1}_block1_drop_path": 0.3 * i / denominator for i in (1, 2, 3)})
    with pytest.raises(ValueError, match="drop_path_schedule"):
        dp_zoo.create_model("nfnet_test", num_classes=3, drop_path_schedule="linear")
    # Switch the residual branches on (SkipInit gains start at 0, hiding any dropping).
    for layer in m.layers:
        if isinstance(layer, SkipInitGain):
            layer.gain.assign(1.0)
    # One image repeated: every difference between rows comes from the drop decisions.
    x = np.repeat(np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32"), 32, axis=0)
    ref = m(x, training=False).numpy()
    np.testing.assert_array_equal(m(x, training=False).numpy(), ref)  # deterministic at inference
    assert np.ptp(ref, axis=0).max() < 1e-5
    # Training: each example draws its own decisions (P(all 32 alike) is negligible).
    out = m(x, training=True).numpy()
    assert len(np.unique(np.round(out, 4), axis=0)) > 1
