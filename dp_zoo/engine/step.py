"""The compiled pieces of one logical DP-SGD step (docs/design.md, "DP-SGD semantics").

``build_step_functions`` returns the three ``tf.function``s the engine calls:

- ``local_sum``: one replica's share of a micro-batch -> normalize, augment
  to K views, clipped per-example gradient sum (a non-private run: the
  masked mean gradient);
- ``distributed_sum``: the same under a ``tf.distribute`` strategy, the
  per-replica sums all-reduced (SUM);
- ``apply``: the noise drawn ONCE on the logical sum, division by the
  expected batch size, weight decay, the optimizer, EMA and Polyak.

They take everything they use as arguments and hold no state of their own:
the variables they update belong to the engine.
"""

from typing import Callable, NamedTuple

import tensorflow as tf

from dp_zoo import preprocessing
from dp_zoo.dp import clipped_grad_sum, mean_grad, noisy_normalized_sum
from dp_zoo.engine import optim

# Keeps the per-replica augmentation seeds apart (a prime, so replicas never collide).
_REPLICA_SEED_STRIDE = 7919


class StepFunctions(NamedTuple):
    """The compiled functions of one logical step (see the module docstring)."""

    local_sum: Callable
    distributed_sum: Callable
    apply: Callable


class Averages(NamedTuple):
    """The engine's averaged copies of the trainable weights (None when off)."""

    ema_vars: list
    polyak_vars: list
    polyak_count: tf.Variable


def make_averages(trainable_variables, ema_config):
    """New ``Averages`` of ``trainable_variables``: EMA and Polyak copies as ``ema_config`` turns them on.

    Call it in the strategy's scope, so the copies are placed like the weights.
    """
    tv = trainable_variables
    ema_vars = [tf.Variable(v.value, trainable=False) for v in tv] if ema_config.decay is not None else None
    polyak_vars = (
        [tf.Variable(v.value, trainable=False) for v in tv] if ema_config.polyak_start is not None else None
    )
    return Averages(ema_vars, polyak_vars, tf.Variable(0, dtype=tf.int64, trainable=False))


def _replica_sum_fn(model, config, augment_fn, mean, std, private, prepared_views=False):
    """The per-replica sum: ``fn(images_u8, labels, mask, seed) -> (grads, norms)``."""
    k = config.augmult.num_views
    l2_clip = float(config.dp.l2_clip)
    # bf16: the forward/backward passes only; the sums come back float32
    # and the update (noise, optimizer, averages) is float32.
    precision = config.precision

    def views(images_u8, seed):
        if prepared_views:
            return images_u8  # linear probing: [b, K, D] features, the K views already made
        # Looked up on the module at trace time, so a patched normalize is honoured.
        x = preprocessing.normalize(images_u8, mean, std)
        if augment_fn is None:
            return tf.repeat(x[:, None], k, axis=1)
        return augment_fn(x, seed)

    def replica_sum(images_u8, labels, mask, seed):
        x = views(images_u8, seed)
        if private:
            grads, norms = clipped_grad_sum(model, x, labels, l2_clip=l2_clip, mask=mask, precision=precision)
        else:
            grads, _ = mean_grad(model, x, labels, mask, precision=precision)
            norms = tf.zeros_like(mask)
        return grads, norms

    return replica_sum


def _distributed_sum_fn(strategy, replica_sum):
    """``replica_sum`` over every replica of ``strategy``, the gradient sums all-reduced."""

    @tf.function(reduce_retracing=True)
    def distributed_sum(images_u8, labels, mask, seed):
        def fn(images_u8, labels, mask, seed):
            # Every replica receives the whole micro-batch and takes its
            # contiguous share; the clipped sums are then all-reduced.
            # Each replica augments its share with its own seed, so with
            # augmentation the crops (not their distribution) differ from
            # a single-device run; without it the runs are identical.
            ctx = tf.distribute.get_replica_context()
            r = ctx.replica_id_in_sync_group
            per = tf.shape(images_u8)[0] // ctx.num_replicas_in_sync
            sl = slice(r * per, (r + 1) * per)
            stride = tf.constant([_REPLICA_SEED_STRIDE, 0], tf.int64)
            return replica_sum(images_u8[sl], labels[sl], mask[sl], seed + tf.cast(r, tf.int64) * stride)

        grads, norms = strategy.run(fn, args=(images_u8, labels, mask, seed))
        grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        return grads, strategy.gather(norms, axis=0)

    return distributed_sum


def _apply_fn(model, optimizer, config, averages, *, private, noise_multiplier, expected_batch_size):
    """``apply(grad_sum, step, noise_seed, ema_on, polyak_on) -> finite``: the noisy update, applied."""
    l2_clip = float(config.dp.l2_clip)
    weight_decay = config.optim.weight_decay
    ema_decay = config.ema.decay

    @tf.function
    def apply(grad_sum, step, noise_seed, ema_on, polyak_on):
        if private:
            # The one noise draw of this logical step (all micro-batches
            # and replicas are already summed into grad_sum).
            update = noisy_normalized_sum(
                grad_sum, l2_clip=l2_clip, noise_multiplier=noise_multiplier,
                expected_batch_size=expected_batch_size, seed=noise_seed)
        else:
            update = list(grad_sum)  # already the mean gradient
        tv = model.trainable_variables
        update = optim.add_weight_decay(update, [v.value for v in tv], weight_decay)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in update])
        if finite:
            optimizer.apply(update, tv)
            if averages.ema_vars is not None:
                mu = optim.ema_decay(step, ema_decay)
                optim.ema_update(averages.ema_vars, [v.value for v in tv], mu)
            if averages.polyak_vars is not None and polyak_on:
                optim.polyak_update(averages.polyak_vars, [v.value for v in tv], averages.polyak_count)
                averages.polyak_count.assign_add(1)
        return finite

    return apply


def build_step_functions(model, optimizer, config, averages, *, strategy, augment_fn, mean, std,
                         private, noise_multiplier, expected_batch_size, prepared_views=False):
    """The ``StepFunctions`` of one logical step.

    Args:
      model: the Keras model being trained.
      optimizer: its built Keras optimizer.
      config: the run's ``TrainConfig``.
      averages: ``Averages`` updated by ``apply``.
      strategy: the ``tf.distribute.Strategy`` of ``distributed_sum``.
      augment_fn: ``fn(images, seed) -> [b,K,H,W,C]`` or None (one plain view).
      mean, std: the normalisation of the training set.
      private: clip and add noise (False: the plain mean gradient).
      noise_multiplier: sigma (0 draws no noise; None only when not private).
      expected_batch_size: B = q N, what the noisy sum is divided by.
      prepared_views: the inputs are already ``[b, K, ...]`` views (linear
        probing's features): used as they are.
    """
    replica_sum = _replica_sum_fn(model, config, augment_fn, mean, std, private, prepared_views)
    return StepFunctions(
        local_sum=tf.function(replica_sum, reduce_retracing=True),
        distributed_sum=_distributed_sum_fn(strategy, replica_sum),
        apply=_apply_fn(model, optimizer, config, averages, private=private,
                        noise_multiplier=noise_multiplier, expected_batch_size=expected_batch_size),
    )


def step_seed(public_seed, step, purpose):
    """The stateless seed of ``(step, purpose)`` derived from the public seed (augmentation only)."""
    return tf.constant([int(public_seed) * 1_000_003 + purpose, int(step)], tf.int64)


def micro_batch_sum(fns, strategy, train, idx, mask, seed):
    """Gradient sum of one micro-batch (rows ``idx`` of ``train``, padding rows masked out)."""
    images = tf.constant(train.images[idx])
    labels = tf.constant(train.labels[idx])
    mask_t = tf.constant(mask)
    sum_fn = fns.local_sum if strategy.num_replicas_in_sync == 1 else fns.distributed_sum
    grads, _ = sum_fn(images, labels, mask_t, seed)
    return grads
