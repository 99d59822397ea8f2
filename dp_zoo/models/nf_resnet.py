"""Normalizer-free ResNets (NF-ResNets), and the block machinery NFNets share.

After Brock, De, Smith 2021, "Characterizing signal propagation to close the
performance gap in unnormalized ResNets" (arXiv 2101.08692), as timm's
``nf_resnet50`` (the parity reference, tests/models/test_timm_parity.py):

- scaled weight-standardized convolutions (``ScaledWSConv2D``) and
  activations scaled by their gains;
- residual blocks ``h + alpha * f(act(h) * beta)`` with alpha = 0.2 and
  beta = 1 / expected_std, the expected variance growing by alpha^2 per block
  and reset to 1 after each stage's first (transition) block;
- transition blocks project the shortcut with 2x2 average pooling and a 1x1
  convolution of the pre-activated input;
- ImageNet stem: 7x7/2 convolution with 64 channels and 3x3/2 max pooling.

Conventions are explicit ``NFResNetConfig`` fields. Defaults follow DeepMind /
jax_privacy (TF SAME padding, SkipInit, gains in the activations, epsilon as
``max(fan_in * var, 1e-4)``); ``TIMM_CONVENTIONS`` are the overrides under
which a model matches timm's ``nf_resnet50`` / ``dm_nfnet_*`` exactly
(symmetric padding, no SkipInit for NF-ResNets, gains folded into the
convolutions, epsilon as ``var + 1e-5``, timm's stochastic depth schedule),
which the parity tests use.

No normalization layers at all, so every example's gradient depends on that
example only (what DP-SGD's per-example clipping needs).
"""

import dataclasses
from typing import Optional, Tuple

import keras
from keras import ops

from dp_zoo.models._registry import register_family
from dp_zoo.models.layers import NONLINEARITY_GAMMA, ScaledActivation, SkipInitGain, SqueezeExcite, StochasticDepth
from dp_zoo.models.ws_conv import ScaledWSConv2D


@dataclasses.dataclass(frozen=True)
class NFResNetConfig:
    """A normalizer-free network (NF-ResNet or NFNet).

    Attributes:
      depths: blocks per stage.
      channels: output channels per stage.
      stem: "7x7_pool" (ResNet stem) or "deep_quad" (NFNet: four 3x3 convs).
      stem_channels: stem output channels.
      bottle_ratio: bottleneck width / output width.
      group_size: channels per group in the 3x3 convolutions (None: dense).
      extra_conv: a second 3x3 convolution in each block (NFNets).
      activation: "relu", "gelu" (exact erf GELU, timm's) or "gelu_tanh"
        (the tanh approximation: jax.nn.gelu's default, DeepMind's NFNets).
      gamma_in_act: scale activations by their gain (NFNets) instead of
        folding it into the following convolution (NF-ResNets).
      same_padding: TensorFlow SAME padding (DeepMind's NFNets) instead of
        symmetric padding.
      skip_init: learnable zero-initialised gain on each residual branch.
      se_ratio: squeeze-excite bottleneck ratio (None: no SE).
      num_features: 1x1 convolution before the head (0: none).
      alpha: residual branch scale.
      eps: weight-standardization epsilon.
      eps_mode: where epsilon enters ("deepmind" or "timm", see
        ``ScaledWSConv2D``).
      ch_div: widths are rounded to multiples of this (timm's rule).
      shortcut_pool: transition shortcuts average-pool then apply a 1x1
        convolution (NFNets, timm); False applies a strided 1x1 convolution
        (DeepMind's NF-ResNets), which keeps the signal variance at init.
      drop_path_rate: stochastic depth rate of the last block (0: off).
      drop_path_schedule: how the per-block rate grows linearly with the
        block's overall index i (0-based) out of n blocks: "deepmind"
        (DeepMind's nfnets: ``rate * i / n``) or "timm" (``linspace(0, rate,
        n)``, i.e. ``rate * i / (n - 1)``).
    """

    depths: Tuple[int, ...]
    channels: Tuple[int, ...] = (256, 512, 1024, 2048)
    stem: str = "7x7_pool"
    stem_channels: int = 64
    bottle_ratio: float = 0.25
    group_size: Optional[int] = None
    extra_conv: bool = False
    activation: str = "relu"
    gamma_in_act: bool = True
    same_padding: bool = True
    skip_init: bool = True
    se_ratio: Optional[float] = None
    num_features: int = 0
    alpha: float = 0.2
    eps: float = 1e-4
    eps_mode: str = "deepmind"
    ch_div: int = 8
    shortcut_pool: bool = False
    drop_path_rate: float = 0.0
    drop_path_schedule: str = "deepmind"

    def __post_init__(self):
        if len(self.depths) != len(self.channels) or not self.depths:
            raise ValueError("depths and channels must be non-empty and of equal length.")
        if self.stem not in ("7x7_pool", "deep_quad"):
            raise ValueError(f"Unknown stem {self.stem!r}; use '7x7_pool' or 'deep_quad'.")
        if self.activation not in NONLINEARITY_GAMMA:
            raise ValueError(f"Unknown activation {self.activation!r}.")
        if self.drop_path_schedule not in ("deepmind", "timm"):
            raise ValueError(
                f"Unknown drop_path_schedule {self.drop_path_schedule!r}; use 'deepmind' or 'timm'."
            )


# Overrides under which our models equal timm's (tests/models/test_timm_parity.py).
TIMM_CONVENTIONS = {
    "nf_resnet": dict(same_padding=False, skip_init=False, gamma_in_act=False, eps=1e-5, eps_mode="timm",
                      shortcut_pool=True, drop_path_schedule="timm"),
    "nfnet": dict(eps=1e-5, eps_mode="timm", drop_path_schedule="timm", activation="gelu"),
}


def make_divisible(v, divisor=8, round_limit=0.9):
    """Rounds ``v`` to a multiple of ``divisor`` (timm's rule, for identical widths)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


@keras.saving.register_keras_serializable(package="dp_zoo")
class MaxPoolSymmetric(keras.layers.Layer):
    """3x3/2 max pooling with 1 pixel of -inf padding on every side (PyTorch's MaxPool2d(3, 2, 1))."""

    def call(self, x):
        x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
        return ops.max_pool(x, pool_size=3, strides=2, padding="valid")

    def compute_output_shape(self, s):
        f = lambda d: None if d is None else (d + 2 - 3) // 2 + 1
        return (s[0], f(s[1]), f(s[2]), s[3])


class _Builder:
    """Functional construction with the config's conv/activation conventions."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.gamma = NONLINEARITY_GAMMA[cfg.activation]

    def act(self, x, name):
        gamma = self.gamma if self.cfg.gamma_in_act else 1.0
        return ScaledActivation(self.cfg.activation, gamma=gamma, name=name)(x)

    def conv(self, x, filters, k, name, strides=1, groups=1, gain_init=1.0):
        cfg = self.cfg
        if cfg.same_padding:
            padding = "same"
        else:
            padding = ((strides - 1) + (k - 1)) // 2  # timm's symmetric padding
        return ScaledWSConv2D(
            filters, k, strides=strides, padding=padding, groups=groups, eps=cfg.eps,
            gamma=1.0 if cfg.gamma_in_act else self.gamma, gain_init=gain_init,
            eps_mode=cfg.eps_mode, name=name,
        )(x)


def _block(b, x, out_ch, stride, beta, drop_rate, name):
    cfg = b.cfg
    in_ch = x.shape[-1]
    mid = make_divisible(out_ch * cfg.bottle_ratio, cfg.ch_div)
    groups = 1
    if cfg.group_size:
        groups = mid // cfg.group_size
        mid = cfg.group_size * groups
    out = b.act(x, f"{name}_act1")
    if beta != 1.0:
        out = keras.layers.Rescaling(beta, name=f"{name}_beta")(out)
    shortcut = x
    if in_ch != out_ch or stride != 1:
        s = out
        if stride > 1 and cfg.shortcut_pool:
            s = keras.layers.AveragePooling2D(2, stride, padding="same", name=f"{name}_down_pool")(s)
        shortcut = b.conv(s, out_ch, 1, f"{name}_down_conv",
                          strides=1 if cfg.shortcut_pool else stride)
    h = b.conv(out, mid, 1, f"{name}_conv1")
    h = b.conv(b.act(h, f"{name}_act2"), mid, 3, f"{name}_conv2", strides=stride, groups=groups)
    if cfg.extra_conv:
        h = b.conv(b.act(h, f"{name}_act2b"), mid, 3, f"{name}_conv2b", groups=groups)
    h = b.conv(b.act(h, f"{name}_act3"), out_ch, 1, f"{name}_conv3", gain_init=1.0 if cfg.skip_init else 0.0)
    if cfg.se_ratio:
        h = SqueezeExcite(make_divisible(out_ch * cfg.se_ratio, 8, round_limit=0.0), gain=2.0, name=f"{name}_se")(h)
    if drop_rate:
        h = StochasticDepth(drop_rate, name=f"{name}_drop_path")(h)
    if cfg.skip_init:
        # Named after timm's "skipinit_gain"; kept, since saved models and --init weight transfer
        # match layers by name.
        h = SkipInitGain(0.0, name=f"{name}_skipinit")(h)
    h = keras.layers.Rescaling(cfg.alpha, name=f"{name}_alpha")(h)
    return keras.layers.Add(name=f"{name}_add")([h, shortcut])


def drop_path_rates(cfg):
    """Per-block stochastic depth rates, in block order (see ``NFResNetConfig``).

    Deeper blocks are dropped more often: the rate grows linearly with the
    block's index over the whole network, from 0 for the first block.

    Returns:
      A list of ``sum(cfg.depths)`` floats.
    """
    n = sum(cfg.depths)
    if not cfg.drop_path_rate:
        return [0.0] * n
    denom = n if cfg.drop_path_schedule == "deepmind" else max(1, n - 1)
    return [cfg.drop_path_rate * i / denom for i in range(n)]


def build_nf_resnet(cfg, *, num_classes, input_shape=(224, 224, 3), name="nf_resnet"):
    """Builds a functional Keras NF network (NF-ResNet or NFNet) from an ``NFResNetConfig``.

    Args:
      cfg: ``NFResNetConfig``.
      num_classes: number of output logits.
      input_shape: ``(H, W, C)`` of the (normalized) input images.
      name: the model's name.

    Returns:
      ``keras.Model`` mapping normalized images to logits.
    """
    b = _Builder(cfg)
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    if cfg.stem == "7x7_pool":
        x = b.conv(inputs, cfg.stem_channels, 7, "stem_conv", strides=2)
        if cfg.same_padding:
            x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
        else:
            x = MaxPoolSymmetric(name="stem_pool")(x)
    else:
        c = cfg.stem_channels
        x = inputs
        for i, (ch, s) in enumerate(zip((c // 8, c // 4, c // 2, c), (2, 1, 1, 2))):
            x = b.conv(x, ch, 3, f"stem_conv{i + 1}", strides=s)
            if i < 3:
                x = b.act(x, f"stem_act{i + 2}")
    rates = drop_path_rates(cfg)
    expected_var = 1.0
    for si, (depth, ch) in enumerate(zip(cfg.depths, cfg.channels)):
        for bi in range(depth):
            stride = (1 if si == 0 else 2) if bi == 0 else 1
            rate = rates[sum(cfg.depths[:si]) + bi]
            x = _block(b, x, ch, stride, 1.0 / expected_var**0.5, rate, f"stage{si + 1}_block{bi + 1}")
            if bi == 0:
                expected_var = 1.0
            expected_var += cfg.alpha**2
    if cfg.num_features:
        x = b.conv(x, cfg.num_features, 1, "final_conv")
    x = b.act(x, "final_act")
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01), name="logits"
    )(x)
    return keras.Model(inputs, logits, name=name)


VARIANTS = {
    "nf_resnet26": NFResNetConfig(depths=(2, 2, 2, 2)),
    "nf_resnet50": NFResNetConfig(depths=(3, 4, 6, 3)),
    "nf_resnet101": NFResNetConfig(depths=(3, 4, 23, 3)),
    "nf_resnet152": NFResNetConfig(depths=(3, 8, 36, 3)),
    "nf_resnet200": NFResNetConfig(depths=(3, 24, 36, 3)),
    # Tiny, for fast tests: one block per stage, 16..128 channels.
    "nf_resnet_test": NFResNetConfig(depths=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_channels=8),
}
_DEFAULT_SHAPES = {"nf_resnet_test": (32, 32, 3)}


# Saved configs (a run's model_kwargs, e.g. TIMM_CONVENTIONS recorded by --init) may spell it so.
OVERRIDE_ALIASES = {"skipinit": "skip_init"}

# The default recipe of --model ARCH (the model swapped in); the tiny test variant runs the digits
# recipe, so that it can be tried end to end in seconds on a CPU.
register_family(VARIANTS, build_nf_resnet, default_shape=(224, 224, 3), default_shapes=_DEFAULT_SHAPES,
                aliases=OVERRIDE_ALIASES, default_recipe="nf_resnet50_imagenet_eps8",
                variant_recipes={"nf_resnet_test": "wrn_digits_eps8"})


def param_count(cfg, *, num_classes=1000, in_channels=3):
    """Parameters of ``build_nf_resnet(cfg)`` computed from the config alone.

    Lets tests and users size NFNet-F3 (~255M parameters, ~1 GB of float32)
    without allocating it; tests check it equals ``count_params()`` of built
    models.
    """
    def conv(cin, cout, k, groups=1):
        return k * k * (cin // groups) * cout + 2 * cout  # kernel, gain, bias

    total = 0
    if cfg.stem == "7x7_pool":
        total += conv(in_channels, cfg.stem_channels, 7)
    else:
        c, cin = cfg.stem_channels, in_channels
        for ch in (c // 8, c // 4, c // 2, c):
            total += conv(cin, ch, 3)
            cin = ch
    prev = cfg.stem_channels
    for si, (depth, ch) in enumerate(zip(cfg.depths, cfg.channels)):
        for bi in range(depth):
            stride = (1 if si == 0 else 2) if bi == 0 else 1
            mid = make_divisible(ch * cfg.bottle_ratio, cfg.ch_div)
            groups = 1
            if cfg.group_size:
                groups = mid // cfg.group_size
                mid = cfg.group_size * groups
            if prev != ch or stride != 1:
                total += conv(prev, ch, 1)  # projection shortcut
            total += conv(prev, mid, 1) + conv(mid, mid, 3, groups)
            if cfg.extra_conv:
                total += conv(mid, mid, 3, groups)
            total += conv(mid, ch, 1)
            if cfg.se_ratio:
                rd = make_divisible(ch * cfg.se_ratio, 8, round_limit=0.0)
                total += 2 * ch * rd + rd + ch
            if cfg.skip_init:
                total += 1
            prev = ch
    if cfg.num_features:
        total += conv(prev, cfg.num_features, 1)
        prev = cfg.num_features
    return total + prev * num_classes + num_classes
