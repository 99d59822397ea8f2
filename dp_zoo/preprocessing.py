"""Image preprocessing shared by training, evaluation and the exported model.

Data sets are kept as uint8 ``[N, H, W, C]``; every consumer maps them to the
model's input with the same function, so a served model sees exactly what
the trained one saw.
"""

import tensorflow as tf


def normalize(images, mean, std):
    """Maps uint8 (or 0..255 float) images to ``(x / 255 - mean) / std``.

    Args:
      images: ``[..., H, W, C]`` uint8 or float tensor in 0..255.
      mean: per-channel mean of ``x / 255`` (length C).
      std: per-channel std of ``x / 255`` (length C).

    Returns:
      float32 tensor of the same shape.
    """
    x = tf.cast(images, tf.float32) / 255.0
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (x - mean) / std
