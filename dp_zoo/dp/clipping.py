"""The clipped gradient sum of one micro-batch: the entry point of the DP step.

``clipped_grad_sum`` clips each example's gradient to global L2 norm C (up
to a relative 1e-6: the norms are float32 computations, docs/privacy.md
"Clipping bound") and sums over the batch; padding and non-finite rows contribute exactly zero
(docs/design.md, "DP-SGD semantics"). Models with weight-standardized
layers take the fast path of ``ws_fast_path``; every other model the
generic one here (vectorized per-example gradients, ``per_example``).
``mean_grad`` is the non-private counterpart, for runs without DP.
"""

import keras
import tensorflow as tf

from dp_zoo.dp import clipping_modes, ws_fast_path, ws_paths
from dp_zoo.dp.per_example import (finite_rows, float32_logits, masked_clip_factors, per_example_grads, sq_norms,
                                   weighted_sum)
from dp_zoo.precision import compute_precision


# Graph construction only, no Python control flow on tensors (it runs eagerly as
# it is): autograph would transpile every function below it, about half of a
# WRN's tracing time.
@tf.autograph.experimental.do_not_convert
def clipped_grad_sum(model, images, labels, *, l2_clip, mask=None, vectorized=True, ghost="auto",
                     fold_gain="auto", precision="float32", clipping=None, unfold="auto"):
    """Sum over examples of per-example gradients clipped to norm ``l2_clip``.

    Args:
      model: Keras model producing logits.
      images: ``[B, K, H, W, C]`` (K augmented views per example).
      labels: ``[B]``.
      l2_clip: clipping norm C (global over all trainable variables).
      mask: optional ``[B]``, 1 for real rows and 0 for padding rows; padding
        rows contribute exactly zero.
      vectorized: see ``per_example_grads``. False always takes the
        generic path (the reference the tests compare against).
      ghost: which weight-standardized convolutions get their per-example
        kernel-gradient norms by ghost clipping (from the layer's input
        patches and output gradients, never forming the per-example kernel
        gradients; see ``ghost.ghost_ws_sq_norms``) rather than from
        vectorized per-example kernel gradients. ``"auto"``: those whose
        Gram matrices cost under ``ghost.GHOST_COST_RATIO`` times the
        multiply-adds of their per-example kernel gradients (few output
        positions times views against a large kernel: in WRN-16-4 at K=1,
        the 3x3 convolutions of the 8x8 stage); ``True``: every eligible
        one; ``False``: none. The result is the same either way (tests
        compare them).
      fold_gain: which of the other WS layers take per-example gradients
        w.r.t. the standardized kernel with their gain multiplied in (the
        gain's gradient then comes from the kernel's, sparing output-sized
        work) rather than w.r.t. the gain-free kernel and the gain.
        ``"auto"``: those whose fan-in is small against the output positions
        per example (``ws_paths.FOLD_COST_RATIO``; in WRN-16-4 at 32x32,
        the 32x32 stage, and at K=4 the 16x16 one too); ``True``: all;
        ``False``: none. The result is the same either way.
      unfold: which ghost-capable WS convolutions that are not ghost get
        their per-example kernel gradients from input patches contracted
        with output gradients in one einsum (``ghost.unfolded_kernel_rows``)
        instead of ``tf.vectorized_map``'s loop over examples. ``"auto"``
        (the default): layers whose per-example kernel gradient is at most
        ``ws_paths.UNFOLD_MAX_MACS`` multiply-adds (every layer of
        wrn_mnist at K=1, WRN-16-4's stem and one shortcut); True: all; False:
        none. The result is the same either way (tests compare them). A
        layer called more than once per example cannot be tapped: ``"auto"``
        then leaves it on the loop, True raises ``NotImplementedError``.
      precision: ``"float32"`` (the model's own policy) or ``"bf16"``: the
        forward and backward passes run under Keras' ``mixed_bfloat16``
        (``dp_zoo.precision.compute_precision``); per-example gradients,
        norms, clip factors and the sum are float32 either way, and so are
        the WS norms and ghost Grams (docs/design.md, "Precision").
      clipping: a ``clipping_modes.Clipping`` (automatic or per-layer
        clipping; its own C replaces ``l2_clip``); None: flat clipping at
        ``l2_clip``.

    Returns:
      ``(grad_sum, norms)``: list aligned with ``model.trainable_variables``
      and the unclipped per-example norms ``[B]``, all float32.

    Raises:
      ValueError: ``ghost``, ``fold_gain`` or ``precision`` is none of the above.
      TypeError: a WS layer does not follow the fast path's protocol
        (``ws_fast_path``).
    """
    ws_paths.check_path_options(ghost, fold_gain, unfold)
    ws = ws_fast_path.ws_kernels(model) if vectorized else []
    with compute_precision(model, precision):
        if ws:
            return ws_fast_path.clipped_grad_sum_ws(model, images, labels, ws, l2_clip=l2_clip, mask=mask,
                                                    ghost=ghost, fold_gain=fold_gain, clipping=clipping, unfold=unfold)
        grads, _ = per_example_grads(model, images, labels, vectorized=vectorized)
    # Per-example gradients w.r.t. float32 variables are float32; the cast
    # covers a model built with bfloat16 variables: norms and sums stay float32.
    grads = [tf.cast(g, tf.float32) for g in grads]
    sq = sq_norms(grads)
    norms = tf.sqrt(tf.add_n(sq))
    mask = finite_rows(norms, mask)
    if clipping is None:
        factors = masked_clip_factors(norms, l2_clip, mask)
    else:
        paths = [v.path for v in model.trainable_variables]
        factors = clipping_modes.clip_factors(clipping, sq, range(len(grads)), paths, norms, mask)
    return weighted_sum(grads, factors, mask, norms), norms


@tf.autograph.experimental.do_not_convert
def mean_grad(model, images, labels, mask=None, precision="float32"):
    """Non-private baseline: ``(gradient of the summed loss of the real rows, their number)``.

    Each row's loss is the mean over its K views; the caller divides the
    sum over micro-batches by the total number of real rows. ``precision``
    as in ``clipped_grad_sum``.
    """
    with compute_precision(model, precision), tf.GradientTape() as tape:
        b = tf.shape(images)[0]
        k = tf.shape(images)[1]
        flat = tf.reshape(images, tf.concat([[b * k], tf.shape(images)[2:]], 0))
        logits = float32_logits(model(flat, training=True))
        losses = keras.losses.sparse_categorical_crossentropy(
            tf.repeat(tf.cast(labels, tf.int32), k), logits, from_logits=True
        )
        losses = tf.reduce_mean(tf.reshape(losses, [b, k]), axis=1)
        if mask is None:
            mask = tf.ones([b])
        mask = tf.cast(mask, losses.dtype)
        total = tf.reduce_sum(losses * mask)
    return tape.gradient(total, model.trainable_variables), tf.reduce_sum(mask)
