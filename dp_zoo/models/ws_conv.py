"""Weight-standardized convolutions: ``WSConv2D`` (WideResNets) and ``ScaledWSConv2D`` (NF-ResNets, NFNets).

Each standardizes its kernel per output channel in the forward pass
(``ws_math.standardize_kernel``), so no statistic crosses examples and
per-example clipping stays exact; under ``ws_override``'s context each
follows the WS fast-path protocol (``dp_zoo/dp/ws_fast_path.py``).
"""

import keras
from keras import ops

from dp_zoo.models.conv_ops import conv2d
from dp_zoo.models.ws_math import standardize_kernel
from dp_zoo.models.ws_override import (apply_gain, grouped_conv, in_per_example_context, override_choice,
                                       overridden_kernel, record_ghost)


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
        """The kernel actually convolved with (mean 0, variance 1/fan_in), float32."""
        # In float32 also under a mixed policy (whose autocast hands the call
        # bfloat16 variables): the variance subtracts large terms.
        return standardize_kernel(ops.cast(self.kernel, "float32"), ops.cast(self.gain, "float32"),
                                  eps=self.eps, eps_mode="deepmind")

    def ws_parts(self):
        """``(kernel, gain, gain_scale, eps, eps_mode)``: w_hat = standardize(kernel, gain * gain_scale).

        None when the layer cannot run under ``standardized_kernel_override``
        (channels-first data, or groups with dilation).
        """
        if self.data_format != "channels_last" or (self.groups > 1 and max(self.dilation_rate) > 1):
            return None
        return self.kernel, self.gain, 1.0, self.eps, "deepmind"

    def call(self, inputs):
        override = overridden_kernel(self)
        if override is None:
            kernel = ops.cast(self.standardized_kernel(), inputs.dtype)
            out = conv2d(inputs, kernel, strides=self.strides, padding=self.padding,
                         dilation_rate=self.dilation_rate, data_format=self.data_format)
        else:
            ghost_ok = self.groups == 1 and self.data_format == "channels_last" and max(self.dilation_rate) == 1
            kernel, gain, choice = override_choice(self, inputs, override, ghost_ok)
            if self.groups > 1:
                out = grouped_conv(inputs, kernel, strides=self.strides, padding=self.padding, groups=self.groups)
            else:
                out = conv2d(inputs, ops.stop_gradient(kernel) if choice == "ghost" else kernel,
                             strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
                             data_format=self.data_format)
            if choice == "ghost":
                record_ghost(self, inputs, out)
            out = apply_gain(out, gain)
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


@keras.saving.register_keras_serializable(package="dp_zoo")
class ScaledWSConv2D(keras.layers.Layer):
    """Conv2D with scaled weight standardization (NF-ResNets, NFNets).

    ``w_hat = gain * gamma * (w - mean) / sqrt(fan_in * var)``, mean and
    (biased) variance per output channel over its fan-in. Where epsilon
    enters is a convention: ``eps_mode="deepmind"`` (DeepMind's nfnets and
    jax_privacy) uses ``rsqrt(max(fan_in * var, eps))``; ``eps_mode="timm"``
    (timm's ``ScaledStdConv2d``) uses ``rsqrt(var + eps) / sqrt(fan_in)``. Standardization happens per forward pass, so there
    are no batch statistics (per-example clipping stays exact).

    Args:
      filters: output channels.
      kernel_size: int.
      strides: int.
      padding: "same" (TensorFlow SAME, as DeepMind's NFNets) or an int of
        symmetric zero padding (PyTorch style, as timm's NF-ResNets), or
        "valid".
      groups: grouped convolution (input and output channels divisible).
      use_bias: add a bias.
      gamma: constant scale (the activation gain when it is folded into the
        convolution).
      eps: variance floor.
      gain_init: initial value of the learnable per-channel gain.
      eps_mode: "deepmind" or "timm" (see above).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", groups=1, use_bias=True,
                 gamma=1.0, eps=1e-4, gain_init=1.0, eps_mode="deepmind", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.gain_init = float(gain_init)
        if eps_mode not in ("deepmind", "timm"):
            raise ValueError(f"eps_mode must be 'deepmind' or 'timm', got {eps_mode!r}.")
        self.eps_mode = eps_mode

    def build(self, input_shape):
        cin = int(input_shape[-1])
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(
                f"{self.name}: groups={self.groups} must divide input channels {cin} and filters {self.filters}."
            )
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, cin // self.groups, self.filters),
            initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
        )
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer=keras.initializers.Constant(self.gain_init)
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        )

    def standardized_kernel(self, dtype="float32"):
        """The kernel actually convolved with, standardized in float32 and returned in ``dtype``."""
        # In float32 also under a mixed policy (see WSConv2D.standardized_kernel).
        w = standardize_kernel(ops.cast(self.kernel, "float32"), ops.cast(self.gain, "float32") * self.gamma,
                               eps=self.eps, eps_mode=self.eps_mode)
        return ops.cast(w, dtype)

    def ws_parts(self):
        """``(kernel, gain, gain_scale, eps, eps_mode)``: w_hat = standardize(kernel, gain * gain_scale)."""
        return self.kernel, self.gain, self.gamma, self.eps, self.eps_mode

    def call(self, x):
        pad = self.padding
        if isinstance(pad, int):
            if pad:
                x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            pad = "valid"
        override = overridden_kernel(self)
        if override is None and self.groups > 1 and in_per_example_context():
            y = grouped_conv(x, self.standardized_kernel(x.dtype), strides=self.strides, padding=pad,
                             groups=self.groups)
        elif override is None:
            y = conv2d(x, self.standardized_kernel(x.dtype), strides=self.strides, padding=pad)
        else:
            kernel, gain, _ = override_choice(self, x, override, ghost_ok=False)
            y = apply_gain(grouped_conv(x, kernel, strides=self.strides, padding=pad, groups=self.groups), gain)
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        k, s = self.kernel_size, self.strides

        def size(d):
            if d is None:
                return None
            if self.padding == "same":
                return -(-d // s)
            p = self.padding if isinstance(self.padding, int) else 0
            return (d + 2 * p - k) // s + 1

        return (n, size(h), size(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "groups": self.groups,
                "use_bias": self.use_bias, "gamma": self.gamma, "eps": self.eps,
                "gain_init": self.gain_init, "eps_mode": self.eps_mode}
