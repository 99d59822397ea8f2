"""The DP step: per-example gradients, clipping, the clipped sum and its noise (docs/design.md).

Small pure TensorFlow functions, each tested alone; ``dp_zoo.engine.trainer``
composes them. Modules:

- ``per_example``: per-example gradients over K views, norms, clip factors,
  rows that count, the clip-weighted sum;
- ``clipping``: ``clipped_grad_sum``, the clipped sum of a micro-batch (the
  entry point), and the non-private ``mean_grad``;
- ``ws_fast_path``: the closed-form path for weight-standardized layers and
  the protocol such a layer follows;
- ``clipping_modes``: ``Clipping``, flat, automatic, per-layer and adaptive
  clipping and the sensitivity the noise is scaled by;
- ``adaptive_clip``: quantile-adaptive clipping's count, noise split and
  update of C;
- ``ghost``: ghost norms of WS convolutions from patch Grams;
- ``noise``: the Gaussian noise, once per logical step.

Imports ``dp_zoo.models`` only, never ``dp_zoo.engine``.
"""

from dp_zoo.dp.clipping import clipped_grad_sum, mean_grad
from dp_zoo.dp.clipping_modes import Clipping
from dp_zoo.dp.ghost import GHOST_COST_RATIO, conv_patches, ghost_ws_sq_norms, patch_gram
from dp_zoo.dp.noise import add_noise, noisy_normalized_sum
from dp_zoo.dp.per_example import clip_factors, finite_rows, global_norms, per_example_grads, weighted_sum
from dp_zoo.dp.ws_fast_path import ghost_layer_names, ws_gradient_paths, ws_kernels
from dp_zoo.dp.ws_paths import FOLD_COST_RATIO

__all__ = [
    "Clipping", "FOLD_COST_RATIO", "GHOST_COST_RATIO", "add_noise", "clip_factors", "clipped_grad_sum", "conv_patches",
    "finite_rows", "ghost_layer_names", "ghost_ws_sq_norms", "global_norms", "mean_grad", "noisy_normalized_sum",
    "patch_gram", "per_example_grads", "weighted_sum", "ws_gradient_paths", "ws_kernels",
]
