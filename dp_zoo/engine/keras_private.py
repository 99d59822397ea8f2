"""``dp_zoo.make_private``: a Keras model whose ``fit()`` runs DP-SGD.

For Keras users who want ``model.fit(x, y)`` rather than the engine. The
returned model keeps the DP semantics of docs/design.md and the threat model
of docs/privacy.md:

- ``fit`` draws Poisson batches itself (each example joins a step with
  probability q = batch_size / N), keyed by a 256-bit secret from OS entropy
  (``sampling.RunSecret``); the ``batch_size`` argument of Keras' own
  shuffling is never used, since the accountant assumes Poisson sampling.
- A logical batch is split into fixed-size micro-batches (padding rows
  masked); clipped per-example gradients are accumulated across them and the
  Gaussian noise (Philox, seeded from the secret and the step) is added once,
  when the logical batch is complete. The sums and the noisy update are the
  engine's own step functions (``dp_zoo.engine.step``), so a non-finite noisy
  update is skipped here as in the engine; steps, sigma and C are resolved
  by ``dp_zoo.engine.resolve`` as the engine's are. Every ``fit`` starts from empty
  accumulators, so an interrupted ``fit`` never carries a partial sum over.
- Every logical step is recorded in ``model.ledger`` when its noisy update
  is applied; ``fit`` refuses to start a run that would exceed
  ``target_epsilon``, and the history has only the epsilon spent (no
  training loss or gradient norms: they depend on the private data).
- What ``fit`` reports counts logical steps, never micro-batches (their
  number is a function of the secret batch sizes): ``History.params``, the
  users' callbacks, and a progress line with no timing. Keras ``fit``
  arguments it cannot honour (validation data, sample or class weights,
  batch_size, ...) are refused, not dropped.
- ``seed=`` makes sampling and noise reproducible, and therefore NOT
  private: ``is_private`` is False and a warning says so.

Example::

    private = dp_zoo.make_private(model, l2_clip=1.0, target_epsilon=8.0,
                                  dataset_size=len(x), batch_size=256, epochs=10)
    private.compile(optimizer=keras.optimizers.SGD(1.0))
    private.fit(x, y, epochs=10)
    print(private.epsilon())
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from dp_zoo import accounting
from dp_zoo.data import sampling
from dp_zoo.engine import resolve, step as step_lib, trainable as trainable_lib
from dp_zoo.engine.fit_inputs import check_fit_arrays
from dp_zoo.precision import check_precision


# Keras fit() arguments that change nothing at these values (Keras' own defaults).
_NO_OP = {"validation_split": 0.0, "initial_epoch": 0, "validation_freq": 1}
_WHY = {
    "batch_size": "make_private models sample Poisson batches themselves; do not pass batch_size or shuffle "
                  "to fit() (the expected batch size was set in make_private)",
    "validation": "fit() takes no validation data (validation_split would carve it out of the training set "
                  "whose N the accounting uses); evaluate the trained model on held-out data afterwards, "
                  "e.g. with private.predict(x_test)",
    "weight": "fit() takes no per-example weights: each example's gradient is clipped to the norm C the "
              "accountant assumes, and a weight would scale it past that bound; drop them",
    "steps": "fit() counts logical DP steps: pass steps= or epochs= instead",
}
_TOPIC = {"batch_size": "batch_size", "shuffle": "batch_size", "sample_weight": "weight", "class_weight": "weight",
          "steps_per_epoch": "steps", "initial_epoch": "steps"}


def _refuse_unsupported(kwargs):
    """Raises ValueError naming the first Keras ``fit`` argument a private fit would otherwise drop."""
    for name, value in kwargs.items():
        if value is None or (name in _NO_OP and value == _NO_OP[name]):
            continue
        topic = "validation" if name.startswith("validation") else _TOPIC.get(name)
        if topic is None:
            raise ValueError(f"fit() got the unsupported argument {name}=; a make_private model's fit takes x, y, "
                             "epochs, steps, verbose and callbacks.")
        raise ValueError(f"{name}= is not supported: {_WHY[topic]}.")


class _LogicalSteps(keras.callbacks.Callback):
    """Drives a fit's callbacks, ledger and progress line by logical DP steps, not micro-batches.

    Keras calls it once per micro-batch. It counts a logical step in the
    ledger at its first micro-batch (write-ahead, as the engine: a step is
    counted before its noise is drawn, so an interrupted step is never lost),
    and forwards to the users' callbacks (with a History) one batch event per
    logical step, with empty logs, and epoch/train-end logs holding only ε.
    """

    def __init__(self, private, step_of, n_steps, verbose, callbacks):
        super().__init__()
        self._private, self._step_of, self._n, self._verbose = private, step_of, n_steps, verbose
        self._done, self._eps = 0, None
        self._users = keras.callbacks.CallbackList(list(callbacks or []), add_history=True, add_progbar=False,
                                                   model=private, verbose=verbose, epochs=1, steps=n_steps)

    def _end_logs(self):
        # Computed once per fit, at its end (an exact PLD epsilon can take a while).
        if self._eps is None:
            self._eps = self._private.ledger.epsilon()
        return {"epsilon": self._eps}

    def on_train_begin(self, logs=None):
        self._users.on_train_begin()

    def on_epoch_begin(self, epoch, logs=None):
        self._users.on_epoch_begin(0)

    def on_train_batch_begin(self, batch, logs=None):
        step, first, _ = self._step_of[batch]
        if first:
            self._private.ledger.record_step()
            self._users.on_train_batch_begin(step)

    def on_train_batch_end(self, batch, logs=None):
        step, _, last = self._step_of[batch]
        if last:
            self._done = step + 1
            self._users.on_train_batch_end(step, {})
            if self._verbose == 1:
                print(f"\rlogical step {self._done}/{self._n}", end="", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = self._end_logs()
        if self._verbose:
            print(f"\rlogical step {self._done}/{self._n}, epsilon={logs['epsilon']:.4f}", flush=True)
        self._users.on_epoch_end(0, logs)

    def on_train_end(self, logs=None):
        self._users.on_train_end(self._end_logs())


def _num_classes(model):
    try:
        n = model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return int(n) if n is not None else None


def _example_shape(model):
    try:
        return tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


class PrivateModel(keras.Model):
    """Wraps a Keras model; ``fit`` trains it with DP-SGD (see module doc).

    Use ``make_private`` to build one.
    """

    def __init__(self, inner, *, plan, physical_batch_size=None, seed=None, precision="float32", **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.plan = plan
        self.precision = check_precision(precision)
        self.physical_batch_size = int(physical_batch_size or min(plan.batch_size, 256))
        self.seed = seed
        if seed is not None:
            warnings.warn(
                f"make_private(seed={seed}) derives batch selection and noise from the seed: the run is "
                "reproducible and NOT differentially private (is_private is False). Leave seed=None for a "
                "private run.", UserWarning, stacklevel=3)
        self.secret = sampling.RunSecret.from_seed(seed) if seed is not None else sampling.RunSecret.generate()
        self.ledger = accounting.PrivacyLedger(
            plan.noise_multiplier, plan.sampling_probability, plan.delta, plan.dataset_size,
            target_epsilon=plan.target_epsilon, accountant=plan.accountant,
        )
        self._acc = None
        self._fns = None
        self._clip_state = None

    @property
    def l2_clip(self):
        """C as given to ``make_private`` (adaptive clipping: the first step's)."""
        return self.plan.l2_clip

    @property
    def current_l2_clip(self):
        """The clipping norm the next step clips at: adaptive clipping's C_t (post-processing of the
        noisy counts, so free to read), else ``l2_clip``."""
        return self.l2_clip if self._clip_state is None else float(self._clip_state.numpy())

    @property
    def noise_multiplier(self):
        """sigma, given or calibrated (``resolve.resolve_privacy``)."""
        return self.plan.noise_multiplier

    @property
    def dataset_size(self):
        """N."""
        return self.plan.dataset_size

    @property
    def expected_batch_size(self):
        """B = q N."""
        return self.plan.batch_size

    @property
    def is_private(self):
        """False for a ``seed=`` run: anyone with the seed can recompute its batches and noise."""
        return not self.secret.reproducible

    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)

    def _ensure_accumulators(self):
        if self._acc is None:
            self._acc = [tf.Variable(tf.zeros_like(v.value), trainable=False)
                         for v in self.inner.trainable_variables]
            spec = self._spec()
            if spec.adaptive:  # the count query's sum rides after the gradients (engine/step.py)
                self._acc.append(tf.Variable(0.0, trainable=False))
                if self._clip_state is None:  # C_t carries over from one fit to the next
                    self._clip_state = step_lib.make_clip_state(spec)

    def _zero_accumulators(self):
        for a in self._acc:
            a.assign(tf.zeros_like(a))

    def _step_functions(self):
        """The engine's DP step (``dp_zoo.engine.step``), built at the first trace: one view per example,
        no weight decay or averages, the optimizer given to ``compile``."""
        if self._fns is None:
            self._ensure_accumulators()
            self._fns = step_lib.build_step_functions(self.inner, self.optimizer, self._spec(),
                                                      step_lib.no_averages(), strategy=tf.distribute.get_strategy(),
                                                      views=step_lib.single_view, clip_state=self._clip_state)
        return self._fns

    def _spec(self):
        return step_lib.StepSpec.for_plan(self.plan, precision=self.precision)

    def train_step(self, data):
        (x, mask, last, noise_seed), y = data
        fns = self._step_functions()
        # single_view does not augment, so the augmentation seed is a constant.
        grads, _ = fns.local_sum(x, y, mask, tf.zeros([2], tf.int64))
        for a, g in zip(self._acc, grads):
            a.assign_add(g)

        def apply():
            fns.apply([a.value() for a in self._acc], tf.constant(0, tf.int64), noise_seed,
                      tf.constant(False), tf.constant(False))
            self._zero_accumulators()
            return tf.constant(1.0)

        tf.cond(last > 0, apply, lambda: tf.constant(0.0))
        # Nothing computed from the private data is logged (no loss, no norms);
        # Keras needs some log, so it gets the public clipping norm.
        return {"l2_clip": tf.constant(self.l2_clip)}

    def fit(self, x, y, *, epochs=1, steps=None, verbose="auto", callbacks=None, **unsupported):
        """Trains with Poisson-sampled DP-SGD.

        Args:
          x: float array ``[N, ...]`` (already preprocessed), N = dataset_size.
          y: integer class indices ``[N]`` in [0, num_classes).
          epochs: logical steps = ceil(epochs * N / batch_size), unless
          steps: is given.
          verbose: 0 silent, 2 one line at the end, 1 (or "auto") a progress
            line per logical step; it shows no timing (a step's duration grows
            with its secret batch size).
          callbacks: Keras callbacks. They see logical DP steps only: one
            ``on_train_batch_begin``/``end`` per step (batch = its index in
            this fit, logs empty), ``params["steps"]`` = the number of steps,
            and at the epoch's end logs holding only "epsilon".

        Returns:
          Keras History: ``params`` as above, and one "epsilon" entry per fit.

        Raises:
          ValueError: a Keras ``fit`` argument this model cannot honour
            (batch_size, shuffle, validation data, sample or class weights,
            steps_per_epoch, initial_epoch, ...), or x/y of the wrong size,
            shape or type, or labels out of range (dp_zoo/engine/fit_inputs.py).
        """
        _refuse_unsupported(unsupported)
        if getattr(self, "steps_per_execution", 1) != 1:
            # Keras then runs several micro-batches per callback, and the
            # ledger would miss noisy updates.
            raise ValueError(
                f"make_private models need compile(steps_per_execution=1), got {self.steps_per_execution}: "
                "each logical step is counted by the privacy ledger as it is applied. Recompile without "
                "steps_per_execution.")
        x, y = check_fit_arrays(x, y, dataset_size=self.dataset_size, num_classes=_num_classes(self.inner),
                                input_shape=_example_shape(self.inner))
        n_steps = resolve.steps_for(steps=steps, epochs=epochs, dataset_size=self.dataset_size,
                                    batch_size=self.expected_batch_size)
        if not self.ledger.can_step(n_steps):
            raise accounting.BudgetExceededError(
                f"{n_steps} more steps would spend epsilon={self.ledger.epsilon_after(n_steps):.4f} "
                f"> target_epsilon={self.ledger.target_epsilon:g}. Train for fewer epochs "
                "or use more noise."
            )
        self._ensure_accumulators()
        # A previous fit stopped mid-step (an exception, a callback) left a
        # partial, noiseless sum: adding to it would let an example count twice.
        self._zero_accumulators()
        micro, step_of = self._schedule(n_steps)
        verbose = 1 if verbose == "auto" else int(verbose)
        # Keras' own CallbackList would count micro-batches (sum_t ceil(|B_t| / p), a function
        # of the secret batch sizes) and time them: the users' callbacks and the History get
        # a list configured for logical steps, driven by _LogicalSteps.
        outer = keras.callbacks.CallbackList(
            [_LogicalSteps(self, step_of, n_steps, verbose, callbacks)], add_history=False,
            add_progbar=False, model=self)
        return super().fit(self._dataset(x, y, micro), epochs=1, steps_per_epoch=len(micro), verbose=0,
                           shuffle=False, callbacks=outer)

    def _schedule(self, n_steps):
        """The micro-batches of the next ``n_steps`` logical steps, and for each one (its step's index in
        this fit, first of its step, last of its step)."""
        start = self.ledger.steps
        sampler = sampling.PoissonSampler(self.dataset_size, self.ledger.sampling_probability, self.secret,
                                          self.physical_batch_size)
        micro, step_of = [], []
        for t in range(start, start + n_steps):
            mbs = sampler.micro_batches(t)
            seed = np.asarray(self.secret.noise_seed(t), np.int64)
            for j, (i, m) in enumerate(mbs):
                micro.append((i, m, float(j == len(mbs) - 1), seed))
                step_of.append((t - start, j == 0, j == len(mbs) - 1))
        return micro, step_of

    def _dataset(self, x, y, micro):
        p = self.physical_batch_size

        def gen():
            for i, m, last, seed in micro:
                yield (x[i].astype(np.float32), m, np.float32(last), seed), y[i].astype(np.int32)

        spec = ((tf.TensorSpec((p,) + x.shape[1:], tf.float32), tf.TensorSpec((p,), tf.float32),
                 tf.TensorSpec((), tf.float32), tf.TensorSpec((2,), tf.int64)), tf.TensorSpec((p,), tf.int32))
        return tf.data.Dataset.from_generator(gen, output_signature=spec).prefetch(2)

    def epsilon(self):
        """Epsilon spent so far (from the accountant)."""
        return self.ledger.epsilon()


def make_private(model, *, l2_clip, dataset_size, batch_size, noise_multiplier=None,
                 target_epsilon=None, delta=1e-5, epochs=None, steps=None,
                 physical_batch_size=None, accountant="pld", seed=None, trainable="all",
                 precision="float32", clipping="flat", clipping_gamma=0.01, layer_clips=(),
                 target_quantile=0.5, clip_learning_rate=0.2, count_noise=None):
    """Returns a Keras model whose ``fit()`` trains ``model`` with DP-SGD.

    Args:
      model: a Keras model producing logits, without cross-example layers
        (a BatchNorm layer must be frozen); its weights are trained in place.
      l2_clip: per-example clipping norm C.
      dataset_size: N, the number of training examples ``fit`` will get.
      batch_size: expected logical batch size B (q = B / N).
      noise_multiplier: sigma; or give
      target_epsilon: and ``epochs``/``steps``: sigma is calibrated for it.
        With both sigma and a target, the target is a budget guard.
      delta: delta of the guarantee.
      physical_batch_size: micro-batch size (memory bound).
      accountant: "pld" or "rdp".
      seed: derives sampling and noise from this seed: reproducible and NOT
        private (``is_private`` is False). Leave None for a private run.
      trainable: "all" (the model's trainable variables), "head" (its
        classifier) or a regex of variable paths; the others are frozen in
        ``model`` (``dp_zoo.engine.trainable``), and clipping and noise cover
        the trained variables only.
      precision: "float32" or "bf16": the forward and backward passes of the
        per-example gradients under Keras' ``mixed_bfloat16`` (the model's
        own policy is put back after each trace, so ``model`` keeps
        predicting in it); norms, clipping, accumulators, noise and the
        optimizer stay float32 (``dp_zoo.precision``).
      clipping: "flat" (each example's gradient to norm ``l2_clip``),
        "automatic" (scaled by 1 / (norm + ``clipping_gamma``): sensitivity
        1, the learning rate absorbs C) or "per_layer" (each layer's part to
        ``l2_clip / sqrt(L)``, or by ``layer_clips``, ``((regex, C_l), ...)``);
        ``dp_zoo.dp.clipping_modes``. The noise is sigma times the rule's
        sensitivity. Or "adaptive" (Andrew et al. 2021): flat clipping at a
        C_t that starts at ``l2_clip`` and follows the ``target_quantile``
        of the norms, moved by ``clip_learning_rate`` through a count noised
        with std ``count_noise`` (default B / 20); sigma is the pair's, the
        gradient draws a little more (``dp_zoo.dp.adaptive_clip``), and
        ``current_l2_clip`` tells C_t.

    Returns:
      A ``PrivateModel``; ``compile`` it with an optimizer, then ``fit``.
      The loss is sparse categorical cross-entropy from logits.
    """
    # steps, sigma and C resolved where the Trainer's are (engine/resolve.py).
    plan = resolve.resolve_privacy(dataset_size=dataset_size, batch_size=batch_size, steps=steps, epochs=epochs,
                                   noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta,
                                   accountant=accountant, l2_clip=l2_clip, steps_required=False,
                                   clipping=clipping, clipping_gamma=clipping_gamma, layer_clips=layer_clips,
                                   target_quantile=target_quantile, clip_learning_rate=clip_learning_rate,
                                   count_noise=count_noise)
    trainable_lib.apply(model, trainable)
    return PrivateModel(model, plan=plan, physical_batch_size=physical_batch_size, seed=seed, precision=precision)
