"""Weight-standardized WideResNets with GroupNorm, optionally ScaleNorm.

The architecture of De et al. 2022 ("Unlocking High-Accuracy Differentially
Private Image Classification through Scale", arXiv 2204.13650), after
Zagoruyko & Komodakis 2016 ("Wide Residual Networks", arXiv 1605.07146),
laid out as jax_privacy's ``experiments/image_classification/models/cifar.py``
(``WideResNet``):

- stem: 3x3 WSConv, 16 channels (``stem_channels``);
- three stages of (depth - 4) / 6 blocks with 16k / 32k / 64k channels and
  strides 1 / 2 / 2; a block is (activation -> GroupNorm -> 3x3 WSConv)
  twice, the stride on the first convolution of the stage;
- the first block of every stage (stage 1 included, even when the channel
  count does not change) has a projection shortcut: activation ->
  its own GroupNorm -> 1x1 WSConv with the stage's stride; the other blocks
  add the raw block input;
- head: activation -> GroupNorm -> global average pool -> [dropout] ->
  dense.

ScaleNorm (Klause et al. 2022, "Differentially Private Training of Residual
Networks with Scale Normalization", arXiv 2203.00324) adds one GroupNorm
after every residual addition. ``skip_init`` is jax_privacy's optional
zero-initialised scalar on the residual branch.

No BatchNorm: DP-SGD needs each example's gradient to depend on that example
alone.
"""

import dataclasses

import keras

from dp_zoo.models._registry import register_family
from dp_zoo.models.layers import SkipInitGain
from dp_zoo.models.ws_conv import WSConv2D

# Haiku's GroupNorm epsilon (Keras defaults to 1e-3).
_GN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class WideResNetConfig:
    """Architecture of a WRN-depth-width.

    Attributes:
      depth: total depth d = 6n + 4; n = (d - 4) / 6 blocks per stage.
      width: widening factor k; stages have 16k, 32k, 64k channels (with the
        default ``stem_channels=16``).
      groups: GroupNorm groups (16 in De et al. 2022).
      scale_norm: one more GroupNorm after each residual addition (ScaleNorm).
      dropout_rate: dropout on the pooled features before the classifier
        (where jax_privacy applies it); 0 disables it.
      activation: Keras activation name; jax_privacy's default is "relu".
      stem_channels: channels of the first 3x3 convolution; stage channels
        are ``stem_channels * width * (1, 2, 4)``. Only the tiny test variant
        changes it.
      skip_init: multiply each residual branch by a zero-initialised
        learnable scalar (jax_privacy's ``use_skip_init``).
    """

    depth: int = 16
    width: int = 4
    groups: int = 16
    scale_norm: bool = False
    dropout_rate: float = 0.0
    activation: str = "relu"
    stem_channels: int = 16
    skip_init: bool = False

    def __post_init__(self):
        for field in ("depth", "width", "groups", "stem_channels"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"WRN {field} must be a positive integer, got {v!r}.")
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(
                f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {self.depth}."
            )
        # Stage 2 and 3 channels are multiples of these two, so checking them
        # covers every GroupNorm in the network.
        for c in (self.stem_channels, self.stem_channels * self.width):
            if c % self.groups:
                raise ValueError(
                    f"GroupNorm groups={self.groups} must divide every channel count "
                    f"({c} here); pick groups dividing {c}."
                )
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        try:
            keras.activations.get(self.activation)
        except ValueError as e:
            raise ValueError(f"Unknown activation {self.activation!r}: {e}") from None

    @property
    def blocks_per_stage(self):
        """Residual blocks per stage, (depth - 4) / 6."""
        return (self.depth - 4) // 6


VARIANTS = {
    "wrn16_4": WideResNetConfig(depth=16, width=4),
    "wrn16_4_scalenorm": WideResNetConfig(depth=16, width=4, scale_norm=True),
    "wrn28_10": WideResNetConfig(depth=28, width=10),
    "wrn40_4": WideResNetConfig(depth=40, width=4),
    "wrn40_4_scalenorm": WideResNetConfig(depth=40, width=4, scale_norm=True),
    # For scikit-learn's 8x8 digits: one block per stage, 16/32/64 channels
    # (~0.18M parameters). depth/width are overridable for tuning.
    "wrn_digits": WideResNetConfig(depth=10, width=1),
    # For MNIST's 28x28 images on a 2-core CPU: one block per stage, 8/16/32 channels (half
    # wrn_digits' width, ~20k parameters): the MNIST recipes' model.
    "wrn_mnist": WideResNetConfig(depth=10, width=1, groups=8, stem_channels=8),
    # Tiny, for fast tests: one block per stage, 4/8/16 channels.
    "wrn_test": WideResNetConfig(depth=10, width=1, groups=2, stem_channels=4),
}
_DEFAULT_SHAPES = {"wrn_digits": (8, 8, 1), "wrn_mnist": (28, 28, 1), "wrn_test": (8, 8, 1)}


def _norm(cfg, name):
    return keras.layers.GroupNormalization(groups=cfg.groups, epsilon=_GN_EPS, name=name)


def _act(cfg, name):
    return keras.layers.Activation(cfg.activation, name=name)


def _block(x, cfg, channels, stride, first, name):
    """One pre-activation residual block (two act -> GN -> 3x3 conv units).

    Args:
      x: block input.
      cfg: ``WideResNetConfig``.
      channels: output channels.
      stride: stride of the first 3x3 conv (and of the projection).
      first: whether this is the stage's first block (projection shortcut).
      name: layer-name prefix.

    Returns:
      The block output tensor.
    """
    if first:
        # jax_privacy projects on the first block of every stage and gives
        # the projection its own act -> GN, separate from the residual
        # branch's first GN.
        s = _act(cfg, f"{name}_skip_act")(x)
        s = _norm(cfg, f"{name}_skip_gn")(s)
        shortcut = WSConv2D(channels, 1, strides=stride, name=f"{name}_skip_conv")(s)
    else:
        shortcut = x
    h = x
    for j in (1, 2):
        h = _act(cfg, f"{name}_act{j}")(h)
        h = _norm(cfg, f"{name}_gn{j}")(h)
        h = WSConv2D(channels, 3, strides=stride if j == 1 else 1, name=f"{name}_conv{j}")(h)
    if cfg.skip_init:
        # jax_privacy stores this scalar with shape [1] (convert's Haiku names).
        h = SkipInitGain(0.0, shape=(1,), name=f"{name}_skip_init")(h)
    out = keras.layers.Add(name=f"{name}_add")([h, shortcut])
    if cfg.scale_norm:
        out = _norm(cfg, f"{name}_scalenorm")(out)
    return out


def build_wide_resnet(cfg, *, num_classes, input_shape=(32, 32, 3), name="wide_resnet"):
    """Builds a functional Keras WRN from a ``WideResNetConfig``.

    Args:
      cfg: ``WideResNetConfig``.
      num_classes: number of output logits.
      input_shape: ``(H, W, C)`` of the (normalized) input images.
      name: the model's name.

    Returns:
      ``keras.Model`` mapping normalized images ``[B, H, W, C]`` to logits
      ``[B, num_classes]``.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = WSConv2D(cfg.stem_channels, 3, name="stem_conv")(inputs)
    base = cfg.stem_channels * cfg.width
    for stage in range(3):
        channels = base * 2**stage
        stride = 1 if stage == 0 else 2
        for b in range(cfg.blocks_per_stage):
            x = _block(
                x, cfg, channels, stride if b == 0 else 1, b == 0,
                f"stage{stage + 1}_block{b + 1}",
            )
    x = _act(cfg, "head_act")(x)
    x = _norm(cfg, "head_gn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if cfg.dropout_rate:
        x = keras.layers.Dropout(cfg.dropout_rate, name="head_dropout")(x)
    # jax_privacy's classifier init: VarianceScaling(1.0), fan-in, truncated
    # normal; bias zero.
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
        name="logits",
    )(x)
    return keras.Model(inputs, logits, name=name)


# python -m dp_zoo.train --model ARCH without --recipe starts from these (with the model swapped in):
# a variant's own recipe where it has one, else the family's; the tiny test variant runs the digits
# recipe, so that it can be tried end to end in seconds on a CPU.
_VARIANT_RECIPES = {
    "wrn16_4_scalenorm": "wrn16_4_scalenorm_cifar10_eps8",
    "wrn28_10": "wrn28_10_cifar10_finetune_eps8",
    "wrn40_4": "wrn40_4_cifar10_eps8",
    "wrn40_4_scalenorm": "wrn40_4_cifar10_eps8",
    "wrn_digits": "wrn_digits_eps8",
    "wrn_mnist": "wrn_mnist_eps8",
    "wrn_test": "wrn_digits_eps8",
}

register_family(VARIANTS, build_wide_resnet, default_shape=(32, 32, 3), default_shapes=_DEFAULT_SHAPES,
                default_recipe="wrn16_4_cifar10_eps8", variant_recipes=_VARIANT_RECIPES)
