"""Keras 3 layers of the model families other than the WS convolutions (``ws_conv.py``).

The scaled activations of NF-ResNets and NFNets (Brock et al. 2021), the
SkipInit gain, per-example StochasticDepth and Squeeze-Excite. All math uses
``keras.ops``.
"""

import keras
from keras import ops


# Gains that make each activation variance-preserving for unit Gaussian
# inputs (Brock et al. 2021a, "Characterizing signal propagation to close the
# performance gap in unnormalized ResNets"; DeepMind's nfnets constants).
NONLINEARITY_GAMMA = {
    "relu": 1.7139588594436646,
    "gelu": 1.7015043497085571,
    # DeepMind's NFNets use jax.nn.gelu, whose default is the tanh
    # approximation; their gain constant is the same to the digits given.
    "gelu_tanh": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "identity": 1.0,
}


def _activation(name, x):
    if name == "relu":
        return ops.relu(x)
    if name == "gelu":
        return ops.gelu(x, approximate=False)  # exact erf GELU, as nn.GELU
    if name == "gelu_tanh":
        return ops.gelu(x, approximate=True)  # as jax.nn.gelu's default
    if name == "silu":
        return ops.silu(x)
    if name == "identity":
        return x
    raise ValueError(f"Unknown activation {name!r}; use one of {sorted(NONLINEARITY_GAMMA)}.")


@keras.saving.register_keras_serializable(package="dp_zoo")
class ScaledActivation(keras.layers.Layer):
    """``gamma * act(x)``; ``gamma`` defaults to the activation's NF gain.

    Args:
      activation: "relu", "gelu" (exact), "gelu_tanh" (tanh approximation),
        "silu" or "identity".
      gamma: output scale; None uses ``NONLINEARITY_GAMMA[activation]``.
    """

    def __init__(self, activation="relu", gamma=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in NONLINEARITY_GAMMA:
            raise ValueError(f"Unknown activation {activation!r}; use one of {sorted(NONLINEARITY_GAMMA)}.")
        self.activation = activation
        self.gamma = float(NONLINEARITY_GAMMA[activation] if gamma is None else gamma)

    def call(self, x):
        y = _activation(self.activation, x)
        return y if self.gamma == 1.0 else y * self.gamma

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="dp_zoo")
class SkipInitGain(keras.layers.Layer):
    """Multiplies by a learnable scalar initialised to ``init`` (0: SkipInit, De & Smith 2020).

    With ``init=0`` each residual branch starts switched off, so the network
    starts as (nearly) the identity of its shortcuts.

    Args:
      init: the scalar's initial value.
      shape: the gain variable's shape, that of the checkpoints the family
        converts from: ``()`` (DeepMind's NFNets, timm) or ``(1,)``
        (jax_privacy's WideResNets). The product is the same.
      **kwargs: as ``keras.layers.Layer``.
    """

    def __init__(self, init=0.0, shape=(), **kwargs):
        super().__init__(**kwargs)
        self.init = float(init)
        self.gain_shape = tuple(int(d) for d in shape)
        if self.gain_shape not in ((), (1,)):
            raise ValueError(f"SkipInitGain holds one scalar: shape () or (1,), got {self.gain_shape}.")

    def build(self, input_shape):
        self.gain = self.add_weight(name="gain", shape=self.gain_shape,
                                    initializer=keras.initializers.Constant(self.init))

    def call(self, x):
        return x * ops.cast(self.gain, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init": self.init, "shape": list(self.gain_shape)}


@keras.saving.register_keras_serializable(package="dp_zoo")
class StochasticDepth(keras.layers.Layer):
    """Drop-path with a per-example decision (Huang et al. 2016).

    The keep/drop decision has shape ``[batch, 1, 1, 1]`` taken from the
    input's own batch dimension, so it stays per example when the forward
    pass is vectorized per example (a batch of one per call). Identity at
    inference; kept paths are rescaled by ``1 / keep_prob``.

    Args:
      rate: drop probability.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # A stateful op on purpose: under tf.vectorized_map (per-example
            # gradients) pfor draws it independently for every example,
            # whereas a stateless draw from one seed would repeat the same
            # decision for the whole batch.
            u = tf.random.uniform(shape, dtype=x.dtype)
        else:
            u = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.cast(u < keep, x.dtype)
        return x * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="dp_zoo")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation as in NFNets: ``gain * x * sigmoid(fc2(relu(fc1(mean(x)))))``.

    Args:
      reduced_channels: width of the bottleneck.
      gain: output scale (2.0 in NFNets, which keeps the signal variance).
    """

    def __init__(self, reduced_channels, gain=2.0, **kwargs):
        super().__init__(**kwargs)
        self.reduced_channels = int(reduced_channels)
        self.gain_value = float(gain)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.fc1 = keras.layers.Conv2D(self.reduced_channels, 1, name="fc1")
        self.fc2 = keras.layers.Conv2D(c, 1, name="fc2")
        self.fc1.build((None, 1, 1, c))
        self.fc2.build((None, 1, 1, self.reduced_channels))

    def call(self, x):
        s = ops.mean(x, axis=(1, 2), keepdims=True)
        s = ops.sigmoid(self.fc2(ops.relu(self.fc1(s))))
        return x * s * self.gain_value

    def get_config(self):
        return {**super().get_config(), "reduced_channels": self.reduced_channels, "gain": self.gain_value}


@keras.saving.register_keras_serializable(package="dp_zoo")
class PixelNormalization(keras.layers.Layer):
    """Pixels (uint8, or floats in 0..255) to the network's input: ``(x / 255 - mean) / std``.

    The same function (``dp_zoo.preprocessing.normalize``) that training,
    evaluation and the SavedModel use, so a model wrapped with this layer sees
    exactly what the trained network saw.

    Args:
      mean: per-channel mean of ``x / 255`` (a data-independent constant,
        ``card["data"]["mean"]``).
      std: per-channel std of ``x / 255``.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, x):
        from dp_zoo import preprocessing

        return preprocessing.normalize(x, self.mean, self.std)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def with_pixel_input(network, mean, std, *, name=None):
    """``network`` behind a ``PixelNormalization``: a model that takes pixels in 0..255 (uint8 or float).

    The weights are ``network``'s own (shared, not copied); the output is
    ``network``'s (logits for every dp_zoo architecture).
    """
    inputs = keras.Input(shape=tuple(network.input_shape[1:]), name="images")
    x = PixelNormalization(mean, std, name="pixel_normalization")(inputs)
    return keras.Model(inputs, network(x), name=name or network.name)
