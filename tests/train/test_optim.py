"""Post-processing of the noisy update: weight decay, EMA, Polyak, learning-rate schedules, optimizers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dp_zoo.engine import optim


def test_ema_decay_warmup_formula():
    for t, mu in [(0, 0.999), (5, 0.999), (10_000, 0.999), (3, 0.5)]:
        want = min(mu, (1 + t) / (10 + t))
        assert abs(float(optim.ema_decay(t, mu)) - want) < 1e-7
    e = [tf.Variable([1.0, 2.0])]
    optim.ema_update(e, [tf.constant([3.0, 4.0])], 0.25)
    np.testing.assert_allclose(e[0].numpy(), [0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 4])
    p = [tf.Variable([0.0])]
    for i, v in enumerate([2.0, 4.0, 6.0]):
        optim.polyak_update(p, [tf.constant([v])], i)
    np.testing.assert_allclose(p[0].numpy(), [4.0], rtol=1e-6)


def test_weight_decay_is_added_to_the_noisy_update():
    upd = [tf.constant([1.0, -2.0])]
    params = [tf.constant([10.0, 20.0])]
    np.testing.assert_allclose(optim.add_weight_decay(upd, params, 0.1)[0].numpy(), [2.0, 0.0])
    assert optim.add_weight_decay(upd, params, 0.0)[0] is upd[0]


def test_learning_rate_schedules_and_optimizers():
    from dp_zoo.recipes.config import OptimConfig

    assert optim.learning_rate_schedule(OptimConfig(learning_rate=2.0), 100) == 2.0
    cos = optim.learning_rate_schedule(OptimConfig(learning_rate=2.0, schedule="cosine"), 100)
    np.testing.assert_allclose([float(cos(0)), float(cos(50)), float(cos(100))], [2.0, 1.0, 0.0], atol=1e-5)
    warm = optim.learning_rate_schedule(
        OptimConfig(learning_rate=1.0, schedule="linear_warmup_cosine", warmup_steps=10), 110)
    np.testing.assert_allclose([float(warm(0)), float(warm(5)), float(warm(10)), float(warm(110))],
                               [0.0, 0.5, 1.0, 0.0], atol=1e-5)
    sgd = optim.make_optimizer(OptimConfig(momentum=0.9, nesterov=True), 10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and sgd.nesterov
    assert isinstance(optim.make_optimizer(OptimConfig(name="adam"), 10), keras.optimizers.Adam)
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule(OptimConfig(schedule="step"), 10)
    with pytest.raises(ValueError, match="optimizer"):
        optim.make_optimizer(OptimConfig(name="lamb"), 10)
