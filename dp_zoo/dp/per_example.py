"""Per-example gradients and what DP-SGD does with them row by row.

Every function here takes or returns ``[B, ...]`` tensors, one row per
example: the per-example gradients themselves (mean loss over an example's K
augmented views, De et al. 2022 §3.1), their global L2 norms, the clip
factors ``min(1, C / ||g||)``, which rows count (padding and non-finite rows
do not), and the clip-weighted sum over rows. ``clipping.clipped_grad_sum``
and the WS fast path (``ws_fast_path``) are built from them.
"""

import keras
import tensorflow as tf

from dp_zoo.models.ws_math import sum_of_squares
from dp_zoo.models.ws_override import standardized_kernel_override


def views_loss(model, params, non_trainable, views, label):
    """Mean cross-entropy over the K views ``[K, H, W, C]`` of one example, in float32.

    Under a mixed policy the logits come in bfloat16; softmax and
    cross-entropy run in float32 (``float32_logits``).
    """
    logits, _ = model.stateless_call(params, non_trainable, views, training=True)
    logits = float32_logits(logits)
    labels = tf.fill([tf.shape(views)[0]], tf.cast(label, tf.int32))
    losses = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return tf.reduce_mean(losses)


def float32_logits(logits):
    """``logits`` as float32: a mixed-precision model's bfloat16 logits would round the loss to 3 digits."""
    return tf.cast(logits, tf.float32)


def per_example_grads(model, images, labels, *, vectorized=True):
    """Per-example gradients of the mean loss over each example's views.

    Args:
      model: a built Keras model (logits out, no cross-example layers).
      images: ``[B, K, H, W, C]`` float32.
      labels: ``[B]`` int.
      vectorized: use ``tf.vectorized_map`` (fast); False uses ``tf.map_fn``
        (the reference the tests compare against).

    Returns:
      ``(grads, losses)``: a list aligned with ``model.trainable_variables``
      of ``[B, *var.shape]`` tensors, and the ``[B]`` per-example losses.
    """
    params = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def one(args):
        views, label = args
        with tf.GradientTape() as tape:
            tape.watch(params)
            # No kernels replaced; our layers just pick per-example-safe ops
            # (grouped convolutions as one convolution per group).
            with standardized_kernel_override({}):
                loss = views_loss(model, params, non_trainable, views, label)
        return tape.gradient(loss, params), loss

    if vectorized:
        return tf.vectorized_map(one, (images, labels), fallback_to_while_loop=True)
    sig = ([tf.TensorSpec(p.shape, p.dtype) for p in params], tf.TensorSpec([], tf.float32))
    return tf.map_fn(one, (images, labels), fn_output_signature=sig)


def global_norms(grads):
    """Per-example global L2 norms ``[B]`` of a list of ``[B, ...]`` grads."""
    return tf.sqrt(tf.add_n(sq_norms(grads)))


def sq_norms(grads):
    """Per tensor of ``[B, ...]`` grads, the ``[B]`` squared L2 norms of its rows."""
    # One single-pass reduction per tensor (see ``sum_of_squares``).
    return [sum_of_squares(tf.reshape(g, [tf.shape(g)[0], -1]), axis=1) for g in grads]


def clip_factors(norms, l2_clip):
    """``min(1, C / ||g||)``, written as ``C / max(||g||, C)`` (safe at 0).

    With the computed norm at least the true one times (1 - 1e-6), the
    clipped gradient has norm at most C (1 + 1e-6), not C exactly
    (docs/privacy.md, "Clipping bound").
    """
    return l2_clip / tf.maximum(norms, l2_clip)


def finite_rows(norms, mask=None):
    """``mask`` with every row whose gradient norm is not finite set to 0.

    Such a row (a NaN or an overflow in one example's gradient) is then
    dropped exactly as a padding row is, and the step happens with its
    noise: one example can never turn a whole step non-finite and skipped,
    which would change what is released (docs/privacy.md). Dropping a row
    is a per-example function with sensitivity 0 <= C, so the guarantee
    is unchanged.
    """
    ok = tf.cast(tf.math.is_finite(norms), norms.dtype)
    return ok if mask is None else tf.cast(mask, norms.dtype) * ok


def masked_clip_factors(norms, l2_clip, mask):
    """``clip_factors`` with the rows where ``mask`` is 0 set to exactly 0."""
    factors = clip_factors(norms, tf.cast(l2_clip, norms.dtype))
    if mask is not None:
        factors = tf.where(tf.cast(mask, tf.bool), factors, tf.zeros_like(factors))
    return factors


def weighted_sum(grads, factors, mask=None, norms=None):
    """``sum_b factors[b] * grads[b]`` for each ``[B, ...]`` tensor of ``grads``.

    ``factors`` is one ``[B]`` tensor, or a list of them aligned with
    ``grads`` (per-layer clipping scales each group by its own factors).

    A contraction over the batch axis (one matrix-vector product per
    variable, a single read of the per-example gradients) rather than a
    broadcast multiply followed by a reduction (a write and two reads).

    A padding row (mask 0) with a non-finite gradient must still contribute
    exactly zero, and ``0 * nan`` is nan: only when such a row exists (rare:
    padding rows are zeros) are those rows replaced by zeros first. A row's
    gradient is non-finite exactly when its norm is (``norms``, computed
    anyway; an overflowing norm of finite values only makes us zero a
    padding row that was zero-weighted already).
    """
    if mask is not None:
        pad = tf.logical_not(tf.cast(mask, tf.bool))
        if norms is None:
            norms = global_norms(grads)
        bad_padding = tf.reduce_any(tf.logical_and(pad, tf.logical_not(tf.math.is_finite(norms))))

        def zero_padding_rows():
            out = []
            for g in grads:
                keep = tf.reshape(tf.logical_not(pad), [-1] + [1] * (len(g.shape) - 1))
                out.append(tf.where(keep, g, tf.zeros_like(g)))
            return out

        grads = tf.cond(bad_padding, zero_padding_rows, lambda: [tf.identity(g) for g in grads])
    if not isinstance(factors, (list, tuple)):
        factors = [factors] * len(grads)
    return [tf.tensordot(f, g, axes=[[0], [0]]) for f, g in zip(factors, grads)]
