"""Weight-standardized WideResNets with GroupNorm, optionally ScaleNorm.

The architecture of De et al. 2022 ("Unlocking High-Accuracy Differentially
Private Image Classification through Scale", arXiv 2204.13650), in
jax_privacy's layer order (activation -> GroupNorm -> WSConv), after
Zagoruyko & Komodakis 2016 ("Wide Residual Networks"). ScaleNorm (Klause et
al. 2022) adds one GroupNorm after every residual addition.

No BatchNorm: DP-SGD needs each example's gradient to depend on that example
alone.
"""

import dataclasses

import keras

from dp_zoo.models._registry import register_model
from dp_zoo.models.layers import WSConv2D


@dataclasses.dataclass(frozen=True)
class WideResNetConfig:
    """WRN-depth-width.

    Attributes:
      depth: total depth d; (d - 4) / 6 blocks per stage.
      width: widening factor k; stages have 16k, 32k, 64k channels.
      groups: GroupNorm groups.
      scale_norm: GroupNorm after each residual addition (ScaleNorm).
      dropout_rate: dropout between the two convolutions of a block.
      activation: activation name (jax_privacy uses relu).
      stem_channels: channels of the first 3x3 convolution.
    """

    depth: int = 16
    width: int = 4
    groups: int = 16
    scale_norm: bool = False
    dropout_rate: float = 0.0
    activation: str = "relu"
    stem_channels: int = 16

    def __post_init__(self):
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(
                f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {self.depth}."
            )
        if self.width < 1:
            raise ValueError(f"WRN width must be >= 1, got {self.width}.")
        for c in (self.stem_channels, 16 * self.width):
            if c % self.groups:
                raise ValueError(
                    f"GroupNorm groups={self.groups} must divide every channel count "
                    f"({c} here); pick groups dividing {c}."
                )
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")

    @property
    def blocks_per_stage(self):
        return (self.depth - 4) // 6


VARIANTS = {
    "wrn16_4": WideResNetConfig(depth=16, width=4),
    "wrn16_4_scalenorm": WideResNetConfig(depth=16, width=4, scale_norm=True),
    "wrn28_10": WideResNetConfig(depth=28, width=10),
    "wrn40_4": WideResNetConfig(depth=40, width=4),
    "wrn40_4_scalenorm": WideResNetConfig(depth=40, width=4, scale_norm=True),
    # For scikit-learn's 8x8 digits: one block per stage, 16/32/64 channels.
    "wrn_digits": WideResNetConfig(depth=10, width=1),
    # Tiny, for fast tests: 4/8/16 channels.
    "wrn_test": WideResNetConfig(depth=10, width=1, groups=2, stem_channels=4),
}
_DEFAULT_SHAPES = {"wrn_digits": (8, 8, 1), "wrn_test": (8, 8, 1)}


def _norm(cfg, name):
    return keras.layers.GroupNormalization(groups=cfg.groups, epsilon=1e-5, name=name)


def _block(x, cfg, channels, stride, name):
    """One pre-activation residual block: act -> GN -> conv, twice."""
    in_channels = x.shape[-1]
    h = keras.layers.Activation(cfg.activation, name=f"{name}_act1")(x)
    h = _norm(cfg, f"{name}_gn1")(h)
    if stride != 1 or in_channels != channels:
        # The projection shortcut sees the normalized activations, as in
        # jax_privacy's WRN.
        shortcut = WSConv2D(channels, 1, strides=stride, name=f"{name}_proj")(h)
    else:
        shortcut = x
    h = WSConv2D(channels, 3, strides=stride, name=f"{name}_conv1")(h)
    h = keras.layers.Activation(cfg.activation, name=f"{name}_act2")(h)
    h = _norm(cfg, f"{name}_gn2")(h)
    if cfg.dropout_rate:
        h = keras.layers.Dropout(cfg.dropout_rate, name=f"{name}_dropout")(h)
    h = WSConv2D(channels, 3, name=f"{name}_conv2")(h)
    out = keras.layers.Add(name=f"{name}_add")([h, shortcut])
    if cfg.scale_norm:
        out = _norm(cfg, f"{name}_scalenorm")(out)
    return out


def build_wide_resnet(cfg, *, num_classes, input_shape=(32, 32, 3), name="wide_resnet"):
    """Builds a functional Keras WRN from a ``WideResNetConfig``.

    Returns:
      ``keras.Model`` mapping normalized images ``[B, H, W, C]`` to logits.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = WSConv2D(cfg.stem_channels, 3, name="stem_conv")(inputs)
    # Stages have 16k/32k/64k channels (stem_channels=16); the tiny test
    # variant shrinks the stem to shrink every stage with it.
    base = cfg.stem_channels * cfg.width
    for stage in range(3):
        channels = base * 2**stage
        for b in range(cfg.blocks_per_stage):
            stride = 2 if (stage > 0 and b == 0) else 1
            x = _block(x, cfg, channels, stride, f"stage{stage + 1}_block{b + 1}")
    x = keras.layers.Activation(cfg.activation, name="head_act")(x)
    x = _norm(cfg, "head_gn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def _make_builder(variant):
    def builder(*, num_classes, input_shape=None, **overrides):
        cfg = dataclasses.replace(VARIANTS[variant], **overrides)
        shape = input_shape or _DEFAULT_SHAPES.get(variant, (32, 32, 3))
        return build_wide_resnet(cfg, num_classes=num_classes, input_shape=shape, name=variant)

    builder.__name__ = variant
    builder.__doc__ = f"{variant}: {VARIANTS[variant]} (overrides: any WideResNetConfig field)."
    return builder


for _variant in VARIANTS:
    register_model(_make_builder(_variant))
