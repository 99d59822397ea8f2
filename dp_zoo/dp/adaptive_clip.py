"""Quantile-adaptive clipping (Andrew et al., NeurIPS 2021): the DP math, as small pure functions.

Each step clips at the current norm C_t and also releases a noisy fraction of
the examples whose gradient norm was at most C_t; C then moves geometrically
towards the target quantile gamma of the norms (docs/privacy.md, "Clipping
modes"):

- the count query sums ``1[||g_i|| <= C_t] - 1/2`` over the examples of the
  step: adding or removing one example moves it by 1/2 (its sensitivity),
  and the realised batch size it would reveal through an uncentred count
  cancels out;
- ``b_t = (count + N(0, sigma_b^2)) / B + 1/2``, divided by the EXPECTED
  batch size B as the gradient is (the realised one is secret);
- ``C_{t+1} = C_t * exp(-eta * (b_t - gamma))``.

The gradient sum (sensitivity C_t, noise ``sigma_grad * C_t``) and the count
(sensitivity 1/2, noise ``sigma_b``) are one Gaussian query of the pair:
whitened, one example moves it by at most ``sqrt(sigma_grad^-2 +
(2 sigma_b)^-2)``. So the pair is exactly a subsampled Gaussian mechanism of
noise multiplier sigma when ``sigma_grad = (sigma^-2 - (2 sigma_b)^-2)^-1/2``
(the paper's Theorem 1): the accountant charges sigma, and the update draws
the slightly larger sigma_grad. C_{t+1} is computed from released noisy
values only (post-processing), so publishing it costs nothing.

The update is proportional to C_t, so the learning rate should suit the norms
C will reach, not the starting C: on digits at epsilon = 1 a learning rate
chosen for C = 1 let C and the gradients grow each other (README, Benchmarks).
"""

import math

import tensorflow as tf

# The count's share of noise by default: sigma_b = B / 20, the paper's recommendation
# (the fraction b_t then has noise std 0.05 whatever the batch size).
DEFAULT_COUNT_NOISE_PER_EXAMPLE = 1.0 / 20.0
# The count noise's Philox stream, apart from the gradient tensors' streams 0, 1, 2, ...
COUNT_NOISE_STREAM = 2**31 - 1
# C stays within these bounds whatever the noisy counts say: 0 or inf would turn clipping into NaN.
MIN_CLIP, MAX_CLIP = 1e-12, 1e12


def default_count_noise(batch_size):
    """The count query's noise std sigma_b when none is given: B / 20."""
    return float(batch_size) * DEFAULT_COUNT_NOISE_PER_EXAMPLE


def gradient_noise_multiplier(noise_multiplier, count_noise):
    """sigma_grad = (sigma^-2 - (2 sigma_b)^-2)^-1/2: the gradient's share of the pair's sigma.

    Args:
      noise_multiplier: sigma, what the accountant charges for one step.
      count_noise: sigma_b, the count query's noise std.

    Raises:
      ValueError: ``2 sigma_b <= sigma``: the count alone would already spend
        more than sigma allows; raise sigma_b.
    """
    sigma, sb = float(noise_multiplier), float(count_noise)
    if sigma == 0.0:
        return 0.0
    if not 2.0 * sb > sigma:
        raise ValueError(
            f"adaptive clipping: the count noise sigma_b={sb:g} must exceed sigma/2={sigma / 2:g} (the pair of "
            f"queries has noise multiplier sigma only if 2 sigma_b > sigma): raise sigma_b above {sigma / 2:g} (flag "
            "--clip-count-noise); the default, B / 20, is too small for this sigma and batch size.")
    return 1.0 / math.sqrt(sigma**-2 - (2.0 * sb) ** -2)


def centred_count(norms, l2_clip, mask):
    """``sum_i mask_i * (1[||g_i|| <= C] - 1/2)``: the count query of one micro-batch (sensitivity 1/2).

    A non-finite norm counts as clipped (its row contributes -1/2, as any
    example may); padding rows (mask 0) contribute nothing.
    """
    below = tf.cast(norms <= tf.cast(l2_clip, norms.dtype), tf.float32)
    return tf.reduce_sum(tf.cast(mask, tf.float32) * (below - 0.5))


def noisy_fraction(count_sum, *, count_noise, expected_batch_size, seed):
    """b_t = (count + N(0, sigma_b^2)) / B + 1/2, the released fraction of unclipped examples."""
    s = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), COUNT_NOISE_STREAM)
    noise = tf.random.stateless_normal([], seed=s, stddev=float(count_noise), dtype=tf.float32)
    return (tf.cast(count_sum, tf.float32) + noise) / float(expected_batch_size) + 0.5


def next_clip(l2_clip, fraction, *, target_quantile, learning_rate):
    """C_{t+1} = C_t exp(-eta (b_t - gamma)), kept within [MIN_CLIP, MAX_CLIP]."""
    c = l2_clip * tf.exp(-float(learning_rate) * (fraction - float(target_quantile)))
    return tf.clip_by_value(c, MIN_CLIP, MAX_CLIP)
