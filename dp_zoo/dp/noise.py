"""The Gaussian noise of DP-SGD, added once per logical step (docs/design.md, "DP-SGD semantics")."""

import tensorflow as tf


def add_noise(grad_sum, *, stddev, seed=None, generator=None):
    """Adds i.i.d. N(0, stddev^2) to every coordinate of ``grad_sum``.

    Args:
      grad_sum: list of tensors.
      stddev: sigma * C.
      seed: ``[2]`` int seed for stateless (reproducible) noise; or
      generator: a ``tf.random.Generator`` (e.g. non-deterministic state).

    Returns:
      The noisy list.
    """
    out = []
    for i, g in enumerate(grad_sum):
        if generator is not None:
            n = generator.normal(tf.shape(g), stddev=stddev, dtype=g.dtype)
        else:
            s = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), i)
            n = tf.random.stateless_normal(tf.shape(g), seed=s, stddev=stddev, dtype=g.dtype)
        out.append(g + n)
    return out


def noisy_normalized_sum(grad_sum, *, l2_clip, noise_multiplier, expected_batch_size,
                         seed=None, generator=None):
    """The privatized gradient of one logical step: ``(sum + N(0, sigma^2 C^2)) / B``.

    Called ONCE per logical step, after the clipped sums of every micro-batch
    and replica have been added up: the noise is calibrated to the
    sensitivity C of the whole logical sum, so adding it per micro-batch or
    per replica would add too much noise (and adding it to a partial sum that
    is later averaged would add too little).

    Args:
      grad_sum: list of tensors, the clipped per-example gradients summed over
        the logical batch.
      l2_clip: clipping norm C (a number, or a scalar float32 tensor).
      noise_multiplier: sigma.
      expected_batch_size: B = q * N. Dividing by the EXPECTED size, not by
        the realised Poisson batch size, keeps the batch size (which depends
        on the data) out of the released update.
      seed, generator: the noise source, as in ``add_noise``.

    Returns:
      list of tensors aligned with ``grad_sum``.
    """
    # A tensor C (adaptive clipping's C_t) stays a tensor; a number gives the constant it always did.
    clip = l2_clip if tf.is_tensor(l2_clip) else float(l2_clip)
    noisy = add_noise(grad_sum, stddev=float(noise_multiplier) * clip, seed=seed, generator=generator)
    return [g / float(expected_batch_size) for g in noisy]
