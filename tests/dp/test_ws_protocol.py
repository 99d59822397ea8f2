"""The WS fast-path protocol (``dp_zoo.dp.ws_fast_path``): a WS layer that breaks it raises.

A layer that offers ``ws_parts()`` gets its per-example kernel and gain
gradients from the tensors ``standardized_kernel_override`` hands it; one
that convolves with its own variables instead would, on the fast path, get
no gradient for them (the fast path differentiates w.r.t. the override
tensors only). That must be a clear error, never a silent zero.
"""

import keras
import numpy as np
import pytest
from keras import ops

from dp_zoo import dp
from dp_zoo.models import ws_override
from dp_zoo.models.ws_conv import WSConv2D
from tests.helpers import assert_equals_naive_loop


class IgnoresOverride(WSConv2D):
    """Convolves with its own standardized kernel whatever the override says."""

    def call(self, inputs):
        out = ops.conv(inputs, self.standardized_kernel(), strides=self.strides, padding=self.padding)
        return out + self.bias


class ReadsItsGain(WSConv2D):
    """Honours the override, and also reads its own gain variable (a penalty-like extra term)."""

    def call(self, inputs):
        return super().call(inputs) + 0.1 * ops.mean(self.gain)


class GhostWithoutRecord(WSConv2D):
    """Accepts the ghost path but never hands its input and output to the tap."""

    def call(self, inputs):
        override = ws_override.overridden_kernel(self)
        if override is None:
            return super().call(inputs)
        kernel, gain, choice = ws_override.override_choice(self, inputs, override, ghost_ok=True)
        out = ops.conv(inputs, ops.stop_gradient(kernel) if choice == "ghost" else kernel, padding="same")
        return ws_override.apply_gain(out, gain) + self.bias


def _model(conv_cls):
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Activation("tanh")(conv_cls(3, 3, name="odd_ws")(inp))
    m = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(4)
    m.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in m.get_weights()])
    x = rng.normal(size=(3, 2, 6, 6, 2)).astype("float32")
    return m, x, np.array([0, 2, 1], np.int32)


@pytest.mark.parametrize("conv_cls", [IgnoresOverride, ReadsItsGain])
@pytest.mark.parametrize("ghost,fold_gain", [(False, False), (False, True), (True, False)])
def test_a_ws_layer_reading_its_own_variables_raises(conv_cls, ghost, fold_gain):
    m, x, y = _model(conv_cls)
    with pytest.raises(TypeError, match=r"'odd_ws'.*standardized_kernel_override.*ws_fast_path"):
        dp.clipped_grad_sum(m, x, y, l2_clip=1.0, ghost=ghost, fold_gain=fold_gain)


def test_a_ghost_layer_that_does_not_record_raises():
    m, x, y = _model(GhostWithoutRecord)
    with pytest.raises(TypeError, match=r"'odd_ws'.*ghost.*record"):
        dp.clipped_grad_sum(m, x, y, l2_clip=1.0, ghost=True)


def test_the_same_layers_honouring_the_protocol_are_exact():
    """The models above with a plain WSConv2D: every path equals the naive loop (the check does not fire)."""
    m, x, y = _model(WSConv2D)
    for ghost, fold_gain in ((False, False), (False, True), (True, False)):
        assert_equals_naive_loop(m, x, y, np.ones(3, np.float32), rel=1e-5, ghost=ghost, fold_gain=fold_gain)
