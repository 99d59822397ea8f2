"""The compiled pieces of one logical DP-SGD step (docs/design.md, "DP-SGD semantics").

``build_step_functions`` returns the three ``tf.function``s that both the
``Trainer`` and ``make_private``'s ``PrivateModel`` call (one DP step, two
drivers):

- ``local_sum``: one replica's share of a micro-batch -> its views (normalize
  and augment to K views; or features, or one preprocessed view), clipped
  per-example gradient sum (a non-private run: the masked mean gradient);
- ``distributed_sum``: the same under a ``tf.distribute`` strategy, the
  per-replica sums all-reduced (SUM);
- ``apply``: the noise drawn ONCE on the logical sum, division by the
  expected batch size, weight decay, the optimizer, EMA and Polyak.

They take everything they use as arguments and hold no state of their own:
the variables they update belong to the engine.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from dp_zoo import preprocessing
from dp_zoo.dp import Clipping, adaptive_clip, clipped_grad_sum, mean_grad, noisy_normalized_sum
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


def no_averages():
    """``Averages`` with EMA and Polyak off (``make_private``)."""
    return Averages(None, None, None)


class StepSpec(NamedTuple):
    """What one logical step computes, from the run's ``resolve.PrivacyPlan`` and its optimisation settings.

    ``for_run`` builds it for the ``Trainer``; ``make_private`` builds it with
    ``for_plan`` (no weight decay or averages). Both then run the same step.
    """

    private: bool
    l2_clip: Optional[float]
    noise_multiplier: Optional[float]  # sigma drawn in the update (0.0: none)
    expected_batch_size: float  # B = q N, what the noisy sum is divided by
    precision: str = "float32"
    weight_decay: float = 0.0
    ema_decay: Optional[float] = None
    clipping: Optional[Clipping] = None  # None: flat at l2_clip
    count_noise: float = 0.0  # adaptive clipping: sigma_b drawn on the count (0.0: none)

    @property
    def sensitivity(self):
        """What the noise std is sigma times: the clipping rule's bound on one example's contribution
        (adaptive clipping: the step's C_t, read from ``make_clip_state``'s variable instead)."""
        return self.l2_clip if self.clipping is None else self.clipping.sensitivity

    @property
    def adaptive(self):
        """Quantile-adaptive clipping: C is step state and a noisy count rides with the sums."""
        return self.private and self.clipping is not None and self.clipping.adaptive

    @property
    def rule(self):
        """The rule ``clipped_grad_sum`` takes: None for flat clipping (its own, unchanged graph; adaptive
        clipping is flat clipping at C_t)."""
        if self.clipping is None or self.clipping.mode in ("flat", "adaptive"):
            return None
        return self.clipping

    @classmethod
    def for_plan(cls, plan, *, precision="float32", weight_decay=0.0, ema_decay=None):
        """The spec of a ``resolve.PrivacyPlan``: C, the clipping rule, the update's sigma and B from it
        (``make_private``'s: no weight decay or averages)."""
        return cls(private=plan.private, l2_clip=plan.l2_clip, noise_multiplier=plan.update_noise_multiplier,
                   clipping=plan.clipping, expected_batch_size=plan.batch_size, precision=precision,
                   weight_decay=weight_decay, ema_decay=ema_decay, count_noise=plan.update_count_noise)

    @classmethod
    def for_run(cls, plan, config):
        """The Trainer's spec: ``for_plan`` with the ``TrainConfig``'s precision, weight decay and EMA."""
        return cls.for_plan(plan, precision=config.precision, weight_decay=config.optim.weight_decay,
                            ema_decay=config.ema.decay)


def make_clip_state(spec):
    """Adaptive clipping's C_t as a float32 variable starting at C (None for the other rules).

    It is training state: checkpointed with the weights (``checkpoint.state_arrays``), so that a
    step redone after a crash clips at the same C bit for bit. Create it in the strategy's scope.
    """
    if not spec.adaptive:
        return None
    return tf.Variable(float(spec.l2_clip), dtype=tf.float32, trainable=False, name="adaptive_l2_clip")


def normalized_views(mean, std, augment_fn, num_views):
    """``views(images_u8, seed) -> [b, K, ...]``: normalize, then augment to K views (or repeat one view)."""

    def views(images_u8, seed):
        # Looked up on the module at trace time, so a patched normalize is honoured.
        x = preprocessing.normalize(images_u8, mean, std)
        if augment_fn is None:
            return tf.repeat(x[:, None], num_views, axis=1)
        return augment_fn(x, seed)

    return views


def prepared_views(inputs, seed):
    """Inputs that already are ``[b, K, ...]`` views (linear probing's features)."""
    return inputs


def single_view(inputs, seed):
    """Inputs that already are preprocessed examples ``[b, ...]``: one view each (``make_private``)."""
    return inputs[:, None]


def _replica_sum_fn(model, spec, views, clip_state):
    """The per-replica sum: ``fn(inputs, labels, mask, seed) -> (grads, norms)``.

    Under adaptive clipping ``grads`` ends with one more entry, the count
    query's centred sum (``adaptive_clip.centred_count``), so that it is
    accumulated and all-reduced with the gradients and noised once in ``apply``.
    """

    def replica_sum(inputs, labels, mask, seed):
        x = views(inputs, seed)
        # bf16: the forward/backward passes only; the sums come back float32
        # and the update (noise, optimizer, averages) is float32.
        if spec.private:
            l2 = spec.l2_clip if clip_state is None else clip_state.read_value()
            grads, norms = clipped_grad_sum(model, x, labels, l2_clip=l2, mask=mask,
                                            precision=spec.precision, clipping=spec.rule)
            if clip_state is not None:
                rows = tf.ones_like(norms) if mask is None else mask
                grads = list(grads) + [adaptive_clip.centred_count(norms, l2, rows)]
        else:
            grads, _ = mean_grad(model, x, labels, mask, precision=spec.precision)
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


def _adaptive_update(grad_sum, spec, clip_state, noise_seed):
    """Adaptive clipping's noisy update at this step's C_t, and C_{t+1} from the noisy count."""
    grad_sum, count = list(grad_sum[:-1]), grad_sum[-1]
    c = clip_state.read_value()
    update = noisy_normalized_sum(grad_sum, l2_clip=c, noise_multiplier=spec.noise_multiplier,
                                  expected_batch_size=spec.expected_batch_size, seed=noise_seed)
    fraction = adaptive_clip.noisy_fraction(count, count_noise=spec.count_noise,
                                            expected_batch_size=spec.expected_batch_size, seed=noise_seed)
    # Post-processing of the released count: C_{t+1} costs no privacy.
    clip_state.assign(adaptive_clip.next_clip(c, fraction, target_quantile=spec.clipping.target_quantile,
                                              learning_rate=spec.clipping.clip_learning_rate))
    return update


def _apply_fn(model, optimizer, spec, averages, clip_state):
    """``apply(grad_sum, step, noise_seed, ema_on, polyak_on) -> finite``: the noisy update, applied."""

    @tf.function
    def apply(grad_sum, step, noise_seed, ema_on, polyak_on):
        if clip_state is not None:
            update = _adaptive_update(grad_sum, spec, clip_state, noise_seed)
        elif spec.private:
            # The one noise draw of this logical step (all micro-batches
            # and replicas are already summed into grad_sum).
            update = noisy_normalized_sum(
                grad_sum, l2_clip=spec.sensitivity, noise_multiplier=spec.noise_multiplier,
                expected_batch_size=spec.expected_batch_size, seed=noise_seed)
        else:
            update = list(grad_sum)  # already the mean gradient
        tv = model.trainable_variables
        update = optim.add_weight_decay(update, [v.value for v in tv], spec.weight_decay)
        # A non-finite noisy update is skipped: decided on the update alone (post-processing).
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in update])
        if finite:
            optimizer.apply(update, tv)
            if averages.ema_vars is not None:
                mu = optim.ema_decay(step, spec.ema_decay)
                optim.ema_update(averages.ema_vars, [v.value for v in tv], mu)
            if averages.polyak_vars is not None and polyak_on:
                optim.polyak_update(averages.polyak_vars, [v.value for v in tv], averages.polyak_count)
                averages.polyak_count.assign_add(1)
        return finite

    return apply


def build_step_functions(model, optimizer, spec, averages, *, strategy, views, clip_state=None):
    """The ``StepFunctions`` of one logical step, for the ``Trainer`` and for ``make_private``.

    Args:
      model: the Keras model being trained.
      optimizer: its built Keras optimizer.
      spec: the ``StepSpec`` (C, sigma, B, precision, weight decay, EMA decay).
      averages: ``Averages`` updated by ``apply`` (``no_averages()`` for none).
      strategy: the ``tf.distribute.Strategy`` of ``distributed_sum``.
      views: ``views(inputs, seed) -> [b, K, ...]``: ``normalized_views``,
        ``prepared_views`` or ``single_view``.
      clip_state: adaptive clipping's C_t (``make_clip_state``); required
        exactly when ``spec.adaptive``.
    """
    if spec.adaptive != (clip_state is not None):
        raise ValueError("adaptive clipping needs its clip state (make_clip_state(spec)), and only it does.")
    replica_sum = _replica_sum_fn(model, spec, views, clip_state)
    return StepFunctions(
        local_sum=tf.function(replica_sum, reduce_retracing=True),
        distributed_sum=_distributed_sum_fn(strategy, replica_sum),
        apply=_apply_fn(model, optimizer, spec, averages, clip_state),
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
