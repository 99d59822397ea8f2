"""Keras 3 layers shared by the model families.

WSConv2D (weight standardization, Qiao et al. 2019; as used by De et al.
2022's WideResNets), ScaledWSConv2D and the scaled activations of NF-ResNets
and NFNets (Brock et al. 2021), SkipInit gain, per-example StochasticDepth
and Squeeze-Excite. All math uses ``keras.ops``.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dp_zoo")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with weight standardization (Qiao et al. 2019).

    As in jax_privacy's WideResNets (De et al. 2022): each output channel's
    kernel is standardized over its fan-in (kh * kw * cin) and scaled by a
    learnable gain,

        w_hat = gain * (w - mean(w)) / sqrt(max(fan_in * var(w), eps)),

    so the standardized kernel has per-output-channel mean 0 and variance
    1 / fan_in. Standardizing in the forward pass makes each example's
    computation independent of the others (no batch statistics), which
    per-example gradient clipping needs.

    The formula, eps and initialisation follow jax_privacy's
    ``experiments/image_classification/models/common.py`` (``WSConv2D``):
    raw kernel ~ N(0, 1/fan_in) (untruncated), gain initialised to 1, bias
    to 0, "same" padding. The raw kernel's scale still matters under WS: the
    gradient w.r.t. the raw kernel scales like 1/std(w), so it sets how
    large each example's gradient is before clipping.

    Args:
      filters: number of output channels.
      kernel_size: int or (kh, kw).
      eps: floor on ``fan_in * var`` (1e-4, jax_privacy's value); keeps a
        constant kernel from dividing by zero.
      **kwargs: as ``keras.layers.Conv2D`` (strides, padding, use_bias, ...).
    """

    def __init__(self, filters, kernel_size, eps=1e-4, **kwargs):
        kwargs.setdefault("padding", "same")
        kwargs.setdefault(
            "kernel_initializer",
            keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
        )
        super().__init__(filters, kernel_size, **kwargs)
        self.eps = eps

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer="ones", trainable=True
        )

    def standardized_kernel(self):
        """The kernel actually convolved with (mean 0, variance 1/fan_in)."""
        w = self.kernel
        fan_in = float(w.shape[0] * w.shape[1] * w.shape[2])
        mean = ops.mean(w, axis=(0, 1, 2), keepdims=True)
        var = ops.var(w, axis=(0, 1, 2), keepdims=True)
        scale = ops.rsqrt(ops.maximum(var * fan_in, self.eps)) * self.gain
        return (w - mean) * scale

    def call(self, inputs):
        out = ops.conv(
            inputs,
            self.standardized_kernel(),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            out = out + self.bias
        if self.activation is not None:
            out = self.activation(out)
        return out

    # Conv2D saves only kernel and bias; the gain must travel too.
    def save_own_variables(self, store):
        if not self.built:
            return
        for i, v in enumerate(self._own_variables()):
            store[str(i)] = v

    def load_own_variables(self, store):
        if not self.built:
            return
        own = self._own_variables()
        if len(store.keys()) != len(own):
            raise ValueError(
                f"Layer {self.name!r} expected {len(own)} variables "
                f"(kernel, [bias], gain), found {len(store.keys())} in the file."
            )
        for i, v in enumerate(own):
            v.assign(store[str(i)])

    def _own_variables(self):
        return [self.kernel] + ([self.bias] if self.use_bias else []) + [self.gain]

    def get_config(self):
        config = super().get_config()
        config["eps"] = self.eps
        return config
