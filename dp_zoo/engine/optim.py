"""What the engine does with the privatized update: optimizers, learning-rate schedules, weight decay, EMA and Polyak averaging.

All of it post-processes the noisy update or the parameters, so none of it
costs privacy (docs/design.md, "DP-SGD semantics").
"""

import keras
import tensorflow as tf


def add_weight_decay(update, params, weight_decay):
    """``update + weight_decay * params`` (L2 decay applied to the noisy update).

    Decay depends only on the current (already private) parameters, so it is
    added after the noise and costs no privacy.
    """
    if not weight_decay:
        return list(update)
    return [u + weight_decay * p for u, p in zip(update, params)]


def ema_decay(step, decay):
    """Warm-up EMA decay ``min(mu, (1 + t) / (10 + t))`` (docs/design.md, "DP-SGD semantics")."""
    t = tf.cast(step, tf.float32)
    return tf.minimum(tf.cast(decay, tf.float32), (1.0 + t) / (10.0 + t))


def ema_update(ema_vars, params, mu):
    """``ema <- mu * ema + (1 - mu) * params`` in place."""
    for e, p in zip(ema_vars, params):
        e.assign(mu * e + (1.0 - mu) * p)


def polyak_update(avg_vars, params, count):
    """Uniform running average: ``avg <- avg + (p - avg) / (count + 1)``."""
    c = tf.cast(count, tf.float32)
    for a, p in zip(avg_vars, params):
        a.assign(a + (p - a) / (c + 1.0))


def learning_rate_schedule(optim, total_steps):
    """A Keras LR schedule for an ``OptimConfig``."""
    lr = optim.learning_rate
    if optim.schedule == "constant":
        return lr
    if optim.schedule in ("cosine", "linear_warmup_cosine"):
        warm = optim.warmup_steps if optim.schedule == "linear_warmup_cosine" else 0
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warm else lr,
            decay_steps=max(1, total_steps - warm),
            warmup_target=lr if warm else None,
            warmup_steps=warm,
        )
    raise ValueError(
        f"Unknown learning-rate schedule {optim.schedule!r}; use 'constant', "
        "'cosine' or 'linear_warmup_cosine'."
    )


def make_optimizer(optim, total_steps):
    """The Keras optimizer for an ``OptimConfig`` (weight decay applied by the engine)."""
    lr = learning_rate_schedule(optim, total_steps)
    if optim.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"Unknown optimizer {optim.name!r}; use 'sgd' or 'adam'.")
