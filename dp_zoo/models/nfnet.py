"""NFNets F0-F7: normalizer-free networks with grouped convolutions and SE.

After Brock, De, Smith, Simonyan 2021, "High-performance large-scale image
recognition without normalization" (arXiv 2102.06171), as DeepMind's
released models and timm's ``dm_nfnet_f*`` (the parity reference): "deep
quad" stem (four 3x3 convolutions, 16/32/64/128 channels), stages of widths
256/512/1536/1536, bottleneck ratio 0.5 with group width 128 and an extra 3x3
convolution, squeeze-excite (ratio 0.5, gain 2), scaled GELU (tanh
approximation, as jax.nn.gelu; timm's exact GELU is a convention field), SkipInit,
TensorFlow SAME padding, and a 1x1 convolution to 3072 features before the
head. The residual machinery is shared with the NF-ResNets (``nf_resnet.py``).

Default input sizes are the test resolutions of the released models.
"""

from dp_zoo.models._registry import register_family
from dp_zoo.models.nf_resnet import OVERRIDE_ALIASES, NFResNetConfig, build_nf_resnet


def nfnet_config(depths, **kw):
    """The NFNet-F configuration for given stage depths."""
    base = dict(
        depths=depths, channels=(256, 512, 1536, 1536), stem="deep_quad", stem_channels=128,
        bottle_ratio=0.5, group_size=128, extra_conv=True, activation="gelu_tanh", gamma_in_act=True,
        same_padding=True, skip_init=True, se_ratio=0.5, num_features=3072, eps=1e-4,
        eps_mode="deepmind", shortcut_pool=True,
    )
    base.update(kw)
    return NFResNetConfig(**base)


VARIANTS = {
    "nfnet_f0": nfnet_config((1, 2, 6, 3)),
    "nfnet_f1": nfnet_config((2, 4, 12, 6)),
    "nfnet_f2": nfnet_config((3, 6, 18, 9)),
    "nfnet_f3": nfnet_config((4, 8, 24, 12)),
    "nfnet_f4": nfnet_config((5, 10, 30, 15)),
    "nfnet_f5": nfnet_config((6, 12, 36, 18)),
    "nfnet_f6": nfnet_config((7, 14, 42, 21)),
    "nfnet_f7": nfnet_config((8, 16, 48, 24)),
    # Tiny, for fast tests: same structure, 16..64 channels, group width 8.
    "nfnet_test": nfnet_config((1, 1, 1, 1), channels=(16, 32, 64, 64), stem_channels=16,
                               group_size=8, num_features=128),
}
_SHAPES = {"nfnet_f0": 256, "nfnet_f1": 320, "nfnet_f2": 352, "nfnet_f3": 416, "nfnet_f4": 512,
           "nfnet_f5": 544, "nfnet_f6": 576, "nfnet_f7": 608, "nfnet_test": 32}
_DEFAULT_SHAPES = {k: (v, v, 3) for k, v in _SHAPES.items()}

# The default recipe of --model ARCH (the model swapped in): every NFNet fine-tunes as F3 does; the
# tiny test variant runs the digits recipe, so that it can be tried end to end in seconds on a CPU.
register_family(VARIANTS, build_nf_resnet, default_shape=(256, 256, 3), default_shapes=_DEFAULT_SHAPES,
                aliases=OVERRIDE_ALIASES, default_recipe="nfnet_f3_imagenet_finetune_eps8",
                variant_recipes={"nfnet_test": "wrn_digits_eps8"})
