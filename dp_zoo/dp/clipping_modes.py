"""How each example's gradient is bounded: flat, automatic, per-layer and adaptive clipping, with their sensitivities.

A ``Clipping`` says how the per-example gradients are scaled before they are
summed, and carries the sensitivity of that sum (the largest norm one
example's contribution can have), which is what the Gaussian noise is scaled
by (``Clipping.sensitivity``; docs/privacy.md, "Clipping modes"):

- ``flat`` (the default): the whole gradient scaled to norm at most C,
  factor ``C / max(||g||, C)``; sensitivity C.
- ``automatic`` (Bu et al., NeurIPS 2023, "Automatic Clipping"): every
  gradient scaled by ``1 / (||g|| + gamma)``; its norm ``||g|| / (||g|| +
  gamma)`` is below 1 for every gradient, so the sensitivity is 1 whatever C
  (the learning rate absorbs it).
- ``per_layer`` (McMahan et al. 2018): the variables split into groups (one
  per Keras layer, or by a list of regular expressions), each group's part
  of the gradient scaled to norm at most ``C_l``; sensitivity
  ``sqrt(sum_l C_l^2)``. By default ``C_l = C / sqrt(L)`` over the L layers
  that train, so the sensitivity stays C.
- ``adaptive`` (Andrew et al., NeurIPS 2021): flat clipping at a norm C_t
  that follows a target quantile of the per-example norms through a noisy
  count (``dp_zoo.dp.adaptive_clip``); C is the starting norm, the noise
  scales with C_t, and the gradient's noise multiplier is raised so that
  the gradient and the count together have the charged sigma.

The factors are functions of the example's own gradient only, so dropping a
non-finite row (``per_example.finite_rows``) and padding rows work as in flat
clipping.
"""

import dataclasses
import math
import re
from typing import Optional, Tuple

import tensorflow as tf

from dp_zoo.dp import adaptive_clip
from dp_zoo.dp.per_example import masked_clip_factors

MODES = ("flat", "automatic", "per_layer", "adaptive")


@dataclasses.dataclass(frozen=True)
class Clipping:
    """A clipping rule (see the module docstring).

    Attributes:
      mode: "flat", "automatic", "per_layer" or "adaptive".
      l2_clip: C (flat: the bound; per_layer: split equally over the layers
        when ``layer_clips`` is empty; automatic: unused, the bound is 1;
        adaptive: the first step's bound C_0).
      gamma: automatic clipping's stability constant (> 0).
      layer_clips: per_layer: ``((regex, C_l), ...)``; a trained variable
        belongs to the first regex that matches its path (``re.search``).
        Every trained variable must match one, and a layer's variables must
        all fall in the same group (the weight-standardised layers' kernel
        and gain gradients come from one computation).
      target_quantile: adaptive: the quantile gamma of the per-example norms
        that C follows, in (0, 1).
      clip_learning_rate: adaptive: eta of the geometric update (> 0).
      count_noise: adaptive: the count query's noise std sigma_b (> 0; the
        plan resolves None to B / 20).
    """

    mode: str = "flat"
    l2_clip: float = 1.0
    gamma: float = 0.01
    layer_clips: Tuple[Tuple[str, float], ...] = ()
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise: Optional[float] = None

    def __post_init__(self):
        check(self.mode, self.l2_clip, self.gamma, self.layer_clips)
        check_adaptive(self.mode, self.target_quantile, self.clip_learning_rate, self.count_noise)

    @property
    def adaptive(self):
        """True for quantile-adaptive clipping: C is step state, not a constant."""
        return self.mode == "adaptive"

    @property
    def sensitivity(self):
        """The bound on one example's contribution to the sum, which the noise std is sigma times
        (adaptive: the first step's C; later steps scale the noise with their own C_t)."""
        if self.mode == "automatic":
            return 1.0
        if self.mode == "per_layer" and self.layer_clips:
            return math.sqrt(sum(float(c) ** 2 for _, c in self.layer_clips))
        return float(self.l2_clip)

    def describe(self, noise_multiplier=None, final_l2_clip=None):
        """The run record's ``privacy.clipping`` section: the mode, its parameters and its sensitivity.

        Adaptive clipping also states the gradient's noise multiplier (from
        the charged ``noise_multiplier``) and, when given, the last C.
        """
        out = {"mode": self.mode, "sensitivity": self.sensitivity}
        if self.adaptive:
            out["sensitivity"] = "C_t, the clipping norm of each step (the gradient noise std is " \
                                 "gradient_noise_multiplier x C_t)"
            out.update(initial_l2_clip=float(self.l2_clip), target_quantile=float(self.target_quantile),
                       clip_learning_rate=float(self.clip_learning_rate), count_noise_stddev=self.count_noise)
            if noise_multiplier is not None and self.count_noise is not None:
                out["gradient_noise_multiplier"] = adaptive_clip.gradient_noise_multiplier(
                    noise_multiplier, self.count_noise)
            if final_l2_clip is not None:
                out["final_l2_clip"] = float(final_l2_clip)
        elif self.mode == "automatic":
            out["gamma"] = float(self.gamma)
        elif self.mode == "per_layer":
            out["layer_clips"] = ([[r, float(c)] for r, c in self.layer_clips] if self.layer_clips
                                  else f"C / sqrt(L) for each of the L trained layers, C = {float(self.l2_clip):g}")
        else:
            out["l2_clip"] = float(self.l2_clip)
        return out


def check(mode, l2_clip, gamma, layer_clips):
    """Raises ValueError naming a clipping setting that cannot be used, and the fix."""
    if mode not in MODES:
        raise ValueError(f"clipping must be one of {', '.join(MODES)}, got {mode!r}.")
    if not l2_clip > 0:
        raise ValueError(f"l2_clip must be > 0 (the clipping norm C), got {l2_clip}.")
    if mode == "automatic" and not gamma > 0:
        raise ValueError(f"automatic clipping needs gamma > 0 (e.g. 0.01), got {gamma}.")
    if layer_clips and mode != "per_layer":
        raise ValueError("layer clips are for per-layer clipping: pass clipping='per_layer' with them.")
    for pattern, c in layer_clips:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"per-layer clip pattern {pattern!r} is not a regular expression: {e}.") from None
        if not c > 0:
            raise ValueError(f"per-layer clip for {pattern!r} must be > 0, got {c}.")


def check_adaptive(mode, target_quantile, clip_learning_rate, count_noise):
    """Raises ValueError naming an adaptive-clipping setting that cannot be used, and the fix."""
    if mode != "adaptive":
        return
    if not 0 < target_quantile < 1:
        raise ValueError(f"adaptive clipping's target quantile must be in (0, 1) (e.g. 0.5), got {target_quantile}.")
    if not clip_learning_rate > 0:
        raise ValueError(f"adaptive clipping's learning rate must be > 0 (e.g. 0.2), got {clip_learning_rate}.")
    if count_noise is not None and not count_noise > 0:
        raise ValueError(f"adaptive clipping's count noise must be > 0 (default B / 20), got {count_noise}.")


def layer_of(path):
    """The Keras layer a variable path belongs to: ``"block1_conv/kernel"`` -> ``"block1_conv"``."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def variable_groups(clipping, paths):
    """``(group index per variable, C_l per group)`` for per-layer clipping of variables ``paths``.

    Raises:
      ValueError: a variable matches no pattern, or one layer's variables fall in different groups.
    """
    if not clipping.layer_clips:
        layers = list(dict.fromkeys(layer_of(p) for p in paths))
        each = float(clipping.l2_clip) / math.sqrt(len(layers))
        return [layers.index(layer_of(p)) for p in paths], [each] * len(layers)
    groups, of_layer = [], {}
    for p in paths:
        g = next((i for i, (pattern, _) in enumerate(clipping.layer_clips) if re.search(pattern, p)), None)
        if g is None:
            raise ValueError(f"per-layer clipping: the trained variable {p!r} matches none of the patterns "
                             f"{[r for r, _ in clipping.layer_clips]}; add one that matches it (e.g. '.*').")
        if of_layer.setdefault(layer_of(p), g) != g:
            raise ValueError(f"per-layer clipping groups whole layers: the variables of {layer_of(p)!r} fall in "
                             "different groups; write patterns that match the layer name.")
        groups.append(g)
    return groups, [float(c) for _, c in clipping.layer_clips]


def clip_factors(clipping, sq_norms, var_index, paths, norms, mask):
    """Per-example scale factors, one ``[B]`` tensor per entry of ``sq_norms``.

    Args:
      clipping: the ``Clipping``.
      sq_norms: list of ``[B]`` squared norms, each of (a part of) one variable's gradient.
      var_index: for each entry of ``sq_norms``, the index of its variable in ``paths``.
      paths: the trained variables' paths.
      norms: ``[B]`` global norms (``sqrt(sum(sq_norms))``).
      mask: ``[B]`` 1 for rows that count (padding and non-finite rows 0).

    Returns:
      A list aligned with ``sq_norms``; under flat and automatic clipping
      every entry is the same tensor (one factor per example).
    """
    if clipping.mode != "per_layer":
        if clipping.mode == "automatic":
            factors = 1.0 / (norms + tf.cast(clipping.gamma, norms.dtype))
            factors = tf.where(tf.cast(mask, tf.bool), factors, tf.zeros_like(factors))
        else:
            factors = masked_clip_factors(norms, clipping.l2_clip, mask)
        return [factors] * len(sq_norms)
    groups, clips = variable_groups(clipping, paths)
    by_group = {}
    for sq, v in zip(sq_norms, var_index):
        by_group.setdefault(groups[v], []).append(sq)
    factor_of = {g: masked_clip_factors(tf.sqrt(tf.add_n(parts)), clips[g], mask) for g, parts in by_group.items()}
    return [factor_of[groups[v]] for v in var_index]
