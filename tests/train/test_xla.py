"""XLA compilation of the DP step: what TPUStrategy needs, checked on CPU.

TPUStrategy compiles each replica's function with XLA, so every op of the
per-example step must have an XLA kernel (TensorFlow's CPU-fast Euclidean-norm
reduction has none). There is no TPU here; these tests compile the same
functions with ``tf.function(jit_compile=True)`` on CPU, which runs the same
TF-to-XLA conversion, and compare with the uncompiled result.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

import dp_zoo
from dp_zoo import data
from dp_zoo import dp
from dp_zoo.engine import trainer as engine, step
from dp_zoo.models import ws_math
from dp_zoo.recipes import config as C


def _max_diff(xs, ys):
    return max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(xs, ys))


@pytest.mark.slow  # XLA compiles of whole DP steps: 25-130 s each on 2 cores
@pytest.mark.parametrize("name,shape,ghost,precision", [
    ("wrn_test", (8, 8, 1), True, "float32"), ("wrn_test", (8, 8, 1), False, "float32"),
    ("nfnet_test", (16, 16, 3), "auto", "float32"),
    # bf16 as on a TPU: mixed_bfloat16 forward/backward, float32 norms, ghost Grams and sums.
    ("wrn_test", (8, 8, 1), True, "bf16"), ("nfnet_test", (16, 16, 3), "auto", "bf16")])
def test_clipped_grad_sum_compiles_with_xla_and_matches(name, shape, ghost, precision):
    keras.utils.set_random_seed(1)
    m = dp_zoo.create_model(name, num_classes=5, input_shape=shape)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 2) + shape).astype("float32")
    y = rng.integers(0, 5, size=4).astype("int32")
    mask = np.array([1, 1, 0, 1], np.float32)

    def step():
        return dp.clipped_grad_sum(m, x, y, l2_clip=0.1, mask=mask, ghost=ghost, precision=precision)

    want, want_norms = tf.function(step)()
    got, norms = tf.function(step, jit_compile=True)()
    assert norms.dtype == tf.float32 and all(g.dtype == tf.float32 for g in got)
    # XLA fuses bf16 ops and rounds at other points than the CPU kernels: bf16 agrees to its precision.
    tol = 1e-4 if precision == "float32" else 3e-2
    np.testing.assert_allclose(norms.numpy(), want_norms.numpy(), rtol=tol)
    assert _max_diff(got, want) <= tol * max(float(tf.reduce_max(tf.abs(w))) for w in want)


def test_sum_of_squares_uses_an_xla_op_only_under_xla():
    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    seen = []

    def f():
        seen.append(ws_math._in_xla_context())
        return ws_math.sum_of_squares(x, axis=1)

    np.testing.assert_allclose(tf.function(f)().numpy(), (x.numpy() ** 2).sum(1))
    np.testing.assert_allclose(tf.function(f, jit_compile=True)().numpy(), (x.numpy() ** 2).sum(1))
    assert seen == [False, True]


@pytest.mark.slow  # an XLA compile of the engine's step and update: ~100 s on 2 cores
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_engine_replica_step_and_update_compile_with_xla(precision):
    """The engine's per-replica clipped sum (augmentation, K=2 views, padding rows) and its update."""
    ds = data.load_dataset(C.DataConfig(), "train")
    c = C.TrainConfig(model="wrn_test", batch_size=64, physical_batch_size=16, steps=1, seed=3,
                      deterministic=True, dp=C.DPConfig(noise_multiplier=1.0, l2_clip=1.0, delta=1e-5),
                      augmult=C.AugmultConfig(num_views=2), ema=C.EMAConfig(decay=0.9),
                      optim=C.OptimConfig(learning_rate=0.5), precision=precision)
    keras.utils.set_random_seed(0)
    t = engine.Trainer(dp_zoo.create_model("wrn_test", num_classes=10), c, ds, progress=False, write_run_dir=False)
    idx = np.arange(16)
    mask = np.ones(16, np.float32)
    mask[-3:] = 0
    args = (tf.constant(t.train.images[idx]), tf.constant(t.train.labels[idx]), tf.constant(mask), step.step_seed(c.seed, 0, 1))
    want, want_norms = t._local_sum(*args)
    got, norms = tf.function(t._local_sum.python_function, jit_compile=True)(*args)
    tol = 1e-4 if precision == "float32" else 3e-2  # XLA rounds bf16 at other points than the CPU kernels
    np.testing.assert_allclose(norms.numpy(), want_norms.numpy(), rtol=tol)
    assert _max_diff(got, want) <= tol * max(float(tf.reduce_max(tf.abs(w))) for w in want)

    # The update, XLA-compiled: plain SGD, so w_after = w_before - lr * (clipped sum + noise) / B. XLA's
    # stateless normal draws other numbers than the CPU kernel for the same seed, so the noise is checked
    # by its law: mean ~ 0, std sigma * C / B (not per replica, not per micro-batch).
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    update_args = (got, tf.constant(0, tf.int64), tf.constant([5, 0], tf.int64), tf.constant(True), tf.constant(False))
    assert bool(tf.function(t._apply.python_function, jit_compile=True)(*update_args))
    lr, b = c.optim.learning_rate, c.batch_size
    noise = np.concatenate([((w0 - v.numpy()) / lr - g.numpy() / b).ravel()
                            for w0, v, g in zip(before, t.model.trainable_variables, got)])
    want_std = c.dp.noise_multiplier * c.dp.l2_clip / b
    assert noise.size > 2000
    assert abs(noise.std() - want_std) / want_std < 0.08
    assert abs(noise.mean()) < 4 * want_std / np.sqrt(noise.size)
    # EMA after the first step (warm-up decay min(0.9, 1/10)) also ran under XLA.
    mu = min(0.9, 1 / 10)
    for e, w0, v in zip(t.ema_vars, before, t.model.trainable_variables):
        np.testing.assert_allclose(e.numpy(), mu * w0 + (1 - mu) * v.numpy(), rtol=1e-5, atol=1e-6)
