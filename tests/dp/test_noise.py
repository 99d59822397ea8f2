"""The noise of a logical step: N(0, sigma^2 C^2) once, over the expected batch size."""

import numpy as np
import tensorflow as tf

from dp_zoo import dp


def test_noise_std_and_seed_reproducibility():
    zeros = [tf.zeros([200, 250])]
    a = dp.add_noise(zeros, stddev=3.0, seed=tf.constant([1, 2], tf.int64))[0].numpy()
    b = dp.add_noise(zeros, stddev=3.0, seed=tf.constant([1, 2], tf.int64))[0].numpy()
    c = dp.add_noise(zeros, stddev=3.0, seed=tf.constant([1, 3], tf.int64))[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert abs(a.std() - 3.0) < 0.05 and abs(a.mean()) < 0.05
    gen = tf.random.Generator.from_non_deterministic_state()
    d = dp.add_noise(zeros, stddev=3.0, generator=gen)[0].numpy()
    assert abs(d.std() - 3.0) < 0.05


def test_noisy_normalized_sum_is_sum_plus_one_gaussian_over_expected_b():
    sigma, c, b = 2.0, 0.5, 64.0
    seed = tf.constant([5, 9], tf.int64)
    zeros = [tf.zeros([300, 300]), tf.zeros([7])]
    pure = dp.noisy_normalized_sum(zeros, l2_clip=c, noise_multiplier=sigma,
                                       expected_batch_size=b, seed=seed)
    # Std of the released update is sigma * C / B (docs/design.md).
    assert abs(pure[0].numpy().std() / (sigma * c / b) - 1) < 0.01
    # Signal and noise: (sum + n) / B with the same n for the same seed.
    g = [tf.fill([300, 300], 3.0), tf.range(7, dtype=tf.float32)]
    got = dp.noisy_normalized_sum(g, l2_clip=c, noise_multiplier=sigma,
                                      expected_batch_size=b, seed=seed)
    for a, x, n in zip(got, g, pure):
        np.testing.assert_allclose(a.numpy(), x.numpy() / b + n.numpy(), rtol=1e-5, atol=1e-6)
