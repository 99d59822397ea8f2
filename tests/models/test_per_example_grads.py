"""Per-example gradients of every tiny model variant: tf.vectorized_map equals a
Python loop over examples (relative error <= 1e-5).

Ops that pfor cannot vectorize fall back to a while_loop under
``tf.vectorized_map`` (correct, slower). Measured with TF 2.21 on CPU:
Conv2DBackpropFilter (every convolution's weight gradient, WS and grouped
convolutions included) falls back; everything else in these models
vectorizes. Grouped convolutions have no CPU gradient at all under pfor
(TF's grouped conv runs through XLA, whose call pfor inlines), so our layers
run them as one convolution per group inside the per-example context
(``ws_override.standardized_kernel_override``). Speed: benchmarks/dp_step.py.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

import dp_zoo
from dp_zoo import dp

TINY = {"wrn_test": (8, 8, 1), "nf_resnet_test": (32, 32, 3), "nfnet_test": (32, 32, 3)}


@pytest.mark.parametrize("name", sorted(TINY))
def test_vectorized_per_example_grads_equal_a_loop(name):
    keras.utils.set_random_seed(0)
    shape = TINY[name]
    m = dp_zoo.create_model(name, num_classes=4, input_shape=shape)
    rng = np.random.default_rng(0)
    # Perturb every weight (SkipInit/zero gains included) so no branch is trivially zero.
    m.set_weights([(w + rng.normal(scale=0.2, size=w.shape)).astype("float32") for w in m.get_weights()])
    x = rng.normal(size=(3, 2) + shape).astype("float32")
    y = np.array([0, 3, 1])
    grads, losses = dp.per_example_grads(m, x, y, vectorized=True)
    for i in range(3):
        with tf.GradientTape() as tape:
            logits = m(x[i], training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(np.repeat(y[i], 2), logits, from_logits=True))
        ref = tape.gradient(loss, m.trainable_variables)
        a = np.concatenate([g[i].numpy().ravel() for g in grads])
        b = np.concatenate([r.numpy().ravel() for r in ref])
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), name
