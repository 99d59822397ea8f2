"""The DP-SGD training loop: virtual batches, noise once per step, EMA, checkpoints.

One logical step t (docs/design.md, docs/privacy.md):

1. Poisson-sample the examples of step t (``sampling.PoissonSampler``, keyed
   by the run's secret: never by the published seed, so nobody can recompute
   which steps an example joined; the secret is kept in the run directory, so
   a resumed run draws the same batches).
2. Split them into fixed-size micro-batches (padding rows masked out); for
   each, normalize, augment to K views and add the clipped per-example
   gradients to the logical sum (``dp_zoo.dp.clipped_grad_sum``). Under a
   ``tf.distribute`` strategy each replica sums its share of the rows and
   the per-replica sums are all-reduced (SUM).
3. Add N(0, sigma^2 C^2) ONCE to the logical sum (Philox stateless normals
   seeded from the run secret and t), divide by the expected batch size
   B = q N, add weight decay, apply the optimizer, update EMA and Polyak
   averages, and record the step in the privacy ledger.

Nothing that depends on the private data leaves the run except through the
noisy updates: no realised batch sizes, per-example norms or per-step
timings in the history, the progress bar or TensorBoard.

Privacy bookkeeping survives crashes. Before a step's noise is drawn the
ledger's spent count is written ahead to ``privacy_journal.json``; on resume
the spent count is the larger of the journal's and the checkpoint's. A step
lost in a crash and redone releases its output a second time, which costs
nothing more only if the redone step is provably bit-identical to the lost
one: same configuration, secret, replica count and device kind, with
TensorFlow's op determinism on. Only then does the redo reuse the lost step's
budget; otherwise, and always when no checkpoint is left (a journal-only
resume), every journalled step is counted.

Checkpoints and the journal are written by ``dp_zoo.train.checkpoint``; the
compiled step functions are built by ``dp_zoo.train.step``.
"""

import math
import os
import platform
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from dp_zoo import accounting, preprocessing
from dp_zoo.train import checkpoint, optim, sampling, step as step_lib

MAX_CONSECUTIVE_NONFINITE = 5


RANDOMNESS_SECRET = ("secret: Poisson sampling (PCG64) and Philox stateless Gaussian noise keyed by a "
                     "256-bit secret from OS entropy, kept only in the run directory")
RANDOMNESS_REPRODUCIBLE = "reproducible: sampling and noise derived from the public seed"
REPRODUCIBLE_DETAIL = ("batch selection and noise were derived from the public seed {seed}, so anyone can "
                       "recompute them; DP-SGD ran, but the model has no privacy guarantee")
NOISELESS_DETAIL = ("trained with DP-SGD's sampling and clipping but no noise (add_noise=False, the "
                    "privacy audit's power check); the model has no privacy guarantee")
OPERATIONAL_NOTE = ("operational, not covered by the privacy guarantee: wall-clock totals grow with the "
                    "realised Poisson batch sizes")


def operational(wall_time_s):
    """The run record's "operational" section (wall-clock totals, labelled as such)."""
    return {"wall_time_s": round(float(wall_time_s), 3), "note": OPERATIONAL_NOTE}


def mark_not_private(privacy, reason, detail):
    """Turns a privacy section into a NOT-private one, keeping the accountant's figures as nominal.

    The epsilons the accountant computed for the configuration move to
    ``nominal_epsilon`` (what the configuration would give had the run been
    private); ``epsilon`` becomes None, so nothing reads them as a guarantee.
    """
    nominal = {k: privacy.get("epsilon_" + k) for k in ("pld", "rdp")}
    if any(v is not None for v in nominal.values()):
        privacy["nominal_epsilon"] = nominal
    privacy.update(private=False, epsilon=None, epsilon_pld=None, epsilon_rdp=None,
                   not_private={"reason": reason, "detail": detail})
    return privacy


class TrainingError(RuntimeError):
    """Training cannot continue (the message says why and what to do)."""


def resolve_steps(config, dataset_size):
    """Number of logical steps: ``steps`` or ``ceil(epochs * N / B)``."""
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        steps = math.ceil(config.epochs * dataset_size / config.batch_size)
    else:
        raise ValueError("Set steps or epochs in the TrainConfig (e.g. --steps 500).")
    if steps < 1:
        raise ValueError(f"The run needs at least one step, got {steps}.")
    return int(steps)


def resolve_noise_multiplier(config, dataset_size, steps, prior_runs=()):
    """sigma from the config, or calibrated from its target epsilon (the total, with ``prior_runs``)."""
    dp = config.dp
    if not dp.enabled:
        return None
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    if dp.target_epsilon is None:
        raise ValueError(
            "A private run needs dp.noise_multiplier or dp.target_epsilon "
            "(e.g. --epsilon 8); for a non-private baseline disable DP explicitly."
        )
    return accounting.calibrate_noise(
        target_epsilon=dp.target_epsilon,
        sampling_probability=config.batch_size / dataset_size,
        steps=steps,
        delta=dp.delta,
        accountant=dp.accountant,
        prior_runs=prior_runs,
    )


def validate(config, train):
    """Clear errors for a configuration that cannot run on ``train``."""
    n = len(train)
    if n < 1:
        raise ValueError("The training set is empty.")
    if not 0 < config.batch_size <= n:
        raise ValueError(
            f"batch_size={config.batch_size} must be in [1, {n}] (the training set size)."
        )
    if config.physical_batch_size < 1:
        raise ValueError(f"physical_batch_size must be >= 1, got {config.physical_batch_size}.")
    if config.dp.enabled and not config.dp.l2_clip > 0:
        raise ValueError(f"l2_clip must be > 0, got {config.dp.l2_clip}.")
    if config.augmult.num_views < 1:
        raise ValueError(f"augmult must be >= 1, got {config.augmult.num_views}.")
    if config.ema.decay is not None and not 0 <= config.ema.decay < 1:
        raise ValueError(f"EMA decay must be in [0, 1), got {config.ema.decay}.")
    if config.optim.learning_rate <= 0:
        raise ValueError(f"learning rate must be > 0, got {config.optim.learning_rate}.")


class Trainer:
    """Trains a Keras model with DP-SGD as docs/design.md defines it.

    Args:
      model: a Keras model mapping normalized images to logits. It must not
        mix examples (no BatchNorm).
      config: ``TrainConfig``.
      train: training ``Dataset`` (uint8 images, labels, mean/std).
      eval_data: optional ``Dataset`` evaluated every ``eval_every`` steps.
      augment_fn: ``fn(images [b,H,W,C], seed [2]) -> [b,K,H,W,C]``;
        default: one un-augmented view.
      run_dir: where checkpoints, the privacy journal and the run record go;
        an existing run is resumed from it.
      strategy: a ``tf.distribute.Strategy`` (default: the current one).
      progress: show a tqdm progress bar.
      write_run_dir: False on the non-chief workers of a multi-worker run:
        they resume from ``run_dir`` but never write it (no checkpoints,
        journal or TensorBoard logs), so workers never race on its files.
      prior_runs: the DP-SGD runs ``((sigma, q, steps), ...)`` behind a
        private initial checkpoint trained on the same data set: composed
        with this run's steps in every epsilon and in the budget
        (docs/privacy.md, "Initial checkpoints").
      add_noise: False trains a private configuration with its sampling,
        clipping and division by the expected batch size but adds no noise
        (sigma 0 in the update): NOT private, and the run record says so
        (``not_private``; the configured sigma's epsilons become nominal).
        Only for the privacy audit's power check (``dp_zoo.audit``).
      tan_simulation: for a TAN-simulated configuration
        (``config.tan_simulation_factor``), ``dp_zoo.tan.tan_info``'s dict,
        stated in the record's privacy section.
    """

    def __init__(self, model, config, train, *, eval_data=None, augment_fn=None, run_dir=None,
                 strategy=None, progress=True, write_run_dir=True, prior_runs=(), add_noise=True,
                 tan_simulation=None):
        validate(config, train)
        self.model = model
        self.config = config
        self.train = train
        self.eval_data = eval_data
        self.run_dir = run_dir
        self.write_run_dir = bool(write_run_dir)
        self.progress = progress
        self.strategy = strategy or tf.distribute.get_strategy()
        self.augment_fn = augment_fn
        n = len(train)
        self.total_steps = resolve_steps(config, n)
        self.q = config.batch_size / n
        self.private = bool(config.dp.enabled)
        prior_runs = tuple(prior_runs) if self.private else ()
        self.noise_multiplier = resolve_noise_multiplier(config, n, self.total_steps, prior_runs)
        self.ledger = accounting.PrivacyLedger(
            self.noise_multiplier, self.q, config.dp.delta, n,
            target_epsilon=config.dp.target_epsilon if self.private else None,
            accountant=config.dp.accountant, sampling=config.dp.sampling,
            private=self.private, planned_steps=self.total_steps, prior_runs=prior_runs,
        )
        self.add_noise = bool(add_noise)
        self.tan_simulation = tan_simulation
        if self.private and not self.add_noise:
            # After the ledger: it keeps the configured sigma, whose epsilons the record shows as nominal.
            self.noise_multiplier = 0.0
        self.step = 0
        self.history = []
        self.wall_time_s = 0.0
        self.nonfinite_steps = 0
        self._consecutive_nonfinite = 0
        self._stop_requested = False
        self._summary_writer = None
        self._noise_device = None
        self._setup_randomness()
        self._build_state()

    # -- state ----------------------------------------------------------------

    def _build_state(self):
        cfg = self.config
        with self.strategy.scope():
            if not self.model.built:
                self.model.build((None,) + self.train.input_shape)
            self.optimizer = optim.make_optimizer(cfg.optim, self.total_steps)
            self.optimizer.build(self.model.trainable_variables)
            tv = self.model.trainable_variables
            self.ema_vars = (
                [tf.Variable(v.value, trainable=False) for v in tv] if cfg.ema.decay is not None else None
            )
            self.polyak_vars = (
                [tf.Variable(v.value, trainable=False) for v in tv] if cfg.ema.polyak_start is not None else None
            )
            self.polyak_count = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.averages = step_lib.Averages(self.ema_vars, self.polyak_vars, self.polyak_count)
        self.mean = tuple(self.train.mean)
        self.std = tuple(self.train.std)
        self._compile_fns()

    def _compile_fns(self):
        fns = step_lib.build_step_functions(
            self.model, self.optimizer, self.config, self.averages, strategy=self.strategy,
            augment_fn=self.augment_fn, mean=self.mean, std=self.std, private=self.private,
            noise_multiplier=self.noise_multiplier, expected_batch_size=self.q * len(self.train))
        self._step_fns = fns
        self._local_sum, self._distributed_sum, self._apply = fns

    # -- secret randomness ----------------------------------------------------

    def _setup_randomness(self):
        """The run's secret and its sampler (docs/privacy.md).

        A private run keys batch selection and noise with a 256-bit secret
        from OS entropy, kept in ``run_dir`` (so a resumed run replays its
        batches) and nowhere else; with several workers the chief's secret
        is shared by an all-reduce, so every worker draws the same batches
        and adds the SAME noise (noise once per logical step, globally). A
        ``deterministic`` run derives it from the public seed instead.
        """
        cfg = self.config
        if cfg.deterministic:
            self.secret = sampling.RunSecret.from_seed(cfg.seed)
        elif self._multi_worker():
            own = sampling.load_or_create_secret(self.run_dir) if self.write_run_dir else None
            self.secret = self._share_from_chief(own)
        else:
            self.secret = sampling.load_or_create_secret(self.run_dir if self.write_run_dir else None)
        self.sampler = sampling.PoissonSampler(len(self.train), self.q, self.secret, cfg.physical_batch_size)

    def _multi_worker(self):
        resolver = getattr(self.strategy, "cluster_resolver", None)
        spec = getattr(resolver, "cluster_spec", None) if resolver is not None else None
        return bool(spec and spec().as_dict())

    def _share_from_chief(self, own):
        """The chief's secret on every worker (one all-reduce SUM; only global replica 0 contributes)."""
        words = np.zeros(sampling.SECRET_BYTES // 4, np.int64)
        if own is not None:
            words = np.frombuffer(own.to_bytes(), "<u4").astype(np.int64)
        parts = tf.constant(words)
        shared = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.strategy.run(lambda: parts if tf.distribute.get_replica_context().replica_id_in_sync_group == 0
                              else tf.zeros_like(parts)), axis=None)
        shared = shared.numpy()
        if not shared.any() or shared.max() >= 2 ** 32:
            raise TrainingError(
                "The workers could not agree on the run secret (global replica 0 is not on the chief). "
                "Name the chief in TF_CONFIG (task type 'chief', or 'worker' 0).")
        return sampling.RunSecret(shared.astype("<u4").tobytes())

    # -- one step ---------------------------------------------------------------

    def _micro_sum(self, idx, mask, step, m):
        seed = step_lib.step_seed(self.config.seed, step * 4096 + m, 1)
        return step_lib.micro_batch_sum(self._step_fns, self.strategy, self.train, idx, mask, seed)

    def train_step(self, step):
        """Runs logical step ``step``; returns ``{"finite": bool}``.

        Nothing data-dependent is returned (no realised batch size, no
        per-example norms): callers log what this returns.
        """
        cfg = self.config
        p = cfg.physical_batch_size
        n_rep = self.strategy.num_replicas_in_sync
        if p % n_rep:
            raise ValueError(
                f"physical_batch_size={p} must be divisible by the {n_rep} replicas."
            )
        batches = self.sampler.micro_batches(step)
        total = None
        for m, (mi, mm) in enumerate(batches):
            g = self._micro_sum(mi, mm, step, m)
            total = g if total is None else [a + b for a, b in zip(total, g)]
        if not self.private:
            count = max(int(sum(mm.sum() for _, mm in batches)), 1)
            total = [t * (1.0 / count) for t in total]
        # Write-ahead: the noise about to be drawn is counted before it exists.
        if self.private:
            self.ledger.record_step()
            self._write_journal()
        finite = bool(self._apply(
            total, tf.constant(step, tf.int64),
            tf.constant(self.secret.noise_seed(step), tf.int64),
            tf.constant(True), tf.constant(cfg.ema.polyak_start is not None and step >= (cfg.ema.polyak_start or 0)),
        ))
        if not self.private:
            self.ledger.record_step()
        self.step = step + 1
        if not finite:
            self.nonfinite_steps += 1
            self._consecutive_nonfinite += 1
            if self._consecutive_nonfinite >= MAX_CONSECUTIVE_NONFINITE:
                raise TrainingError(
                    f"{self._consecutive_nonfinite} consecutive steps produced non-finite updates "
                    f"(last at step {step}); the weights were left unchanged. Lower the learning "
                    "rate or check the data; the privacy spent on these steps is counted."
                )
        else:
            self._consecutive_nonfinite = 0
        return {"finite": finite}

    # -- checkpoints ------------------------------------------------------------

    def _write_journal(self):
        if self.run_dir is None or not self.write_run_dir:
            return
        checkpoint.write_journal(self.run_dir, self.ledger, self._replay_identity(), self.step)

    def _replay_identity(self):
        """What must match for a redone step to be bit-identical to a lost one (``checkpoint.replay_identity``)."""
        if self._noise_device is None:
            self._noise_device = checkpoint.noise_device(self.strategy)
        return checkpoint.replay_identity(self.config, self.secret, self.strategy.num_replicas_in_sync,
                                          self._noise_device)

    def save_checkpoint(self):
        """Atomically writes a checkpoint of the current step (None when this process does not write)."""
        if self.run_dir is None or not self.write_run_dir:
            return None
        meta = {
            "ledger": self.ledger.to_dict(),
            "config": self.config.to_dict(),
            "history": self.history,
            "wall_time_s": self.wall_time_s,
            "nonfinite_steps": self.nonfinite_steps,
            "noise_multiplier": self.noise_multiplier,
        }
        arrays = checkpoint.state_arrays(self.model, self.optimizer, self.averages)
        return checkpoint.save(checkpoint.checkpoint_dir(self.run_dir), self.step, arrays, meta)

    def restore(self):
        """Resumes from the newest good checkpoint in ``run_dir``; returns its step or None."""
        ckpt_dir = None if self.run_dir is None else checkpoint.checkpoint_dir(self.run_dir)
        if ckpt_dir is None or not os.path.isdir(ckpt_dir):
            return self._restore_journal_only()
        found, errors = checkpoint.load_newest(ckpt_dir)
        if found is not None:
            self._apply_checkpoint(*found)
            return self.step
        if errors:
            raise TrainingError(
                f"Every checkpoint in {ckpt_dir} is corrupt ({'; '.join(errors)}). "
                "Refusing to restart from scratch, which would reset the privacy budget: "
                "restore a checkpoint from backup or start a new run in a new directory "
                "(its privacy cost adds to this one's)."
            )
        return self._restore_journal_only()

    def _restore_journal_only(self):
        # No checkpoint: the run restarts from step 0, and every journalled
        # step stays counted (their outputs were released and are not replayed
        # from a saved state).
        spent = self._journal_spent(replayable=False)
        if spent:
            self.ledger.steps = max(self.ledger.steps, spent)
        return None

    def _journal_spent(self, replayable=True):
        return checkpoint.journal_spent(self.run_dir, self.ledger, self._replay_identity, replayable)

    def _apply_checkpoint(self, meta, arrays):
        try:
            # As a TrainConfig, so that keys an older version wrote and that
            # configure nothing (from_dict drops them) do not block a resume.
            same = type(self.config).from_dict(meta["config"]) == self.config
        except (TypeError, ValueError):  # fields this version does not know
            same = False
        if not same:
            raise TrainingError(
                f"The run directory {self.run_dir} holds a run with a different configuration. "
                "Resume with the same configuration, or use a new --run-dir."
            )
        checkpoint.assign_state(arrays, self.model, self.optimizer, self.averages)
        self.step = int(meta["step"])
        self.history = list(meta["history"])
        self.wall_time_s = float(meta["wall_time_s"])
        self.nonfinite_steps = int(meta.get("nonfinite_steps", 0))
        ledger = accounting.PrivacyLedger.from_dict(meta["ledger"], expect=self.ledger)
        self.ledger.steps = max(ledger.steps, self._journal_spent())

    # -- evaluation -------------------------------------------------------------

    def _weights_for(self, params):
        tv = self.model.trainable_variables
        if params == "last":
            return [v.numpy() for v in tv]
        if params == "ema":
            if self.ema_vars is None:
                raise ValueError("EMA is off in this run (ema.decay is None).")
            return [v.numpy() for v in self.ema_vars]
        if params == "polyak":
            if self.polyak_vars is None:
                raise ValueError("Polyak averaging is off in this run (ema.polyak_start is None).")
            return [v.numpy() for v in self.polyak_vars]
        raise ValueError(f"params must be 'last', 'ema' or 'polyak', got {params!r}.")

    def model_for(self, params="last"):
        """A copy of the model carrying the ``params`` weights."""
        clone = keras.models.clone_model(self.model)
        clone.build((None,) + self.train.input_shape)
        clone.set_weights(self.model.get_weights())
        for v, w in zip(clone.trainable_variables, self._weights_for(params)):
            v.assign(w)
        return clone

    def evaluate(self, dataset, params="last", batch_size=512):
        """Accuracy and mean loss of ``params`` weights on ``dataset``."""
        saved = [v.numpy() for v in self.model.trainable_variables]
        try:
            for v, w in zip(self.model.trainable_variables, self._weights_for(params)):
                v.assign(w)
            correct, loss_sum = 0, 0.0
            for i in range(0, len(dataset), batch_size):
                x = preprocessing.normalize(dataset.images[i:i + batch_size], self.mean, self.std)
                y = dataset.labels[i:i + batch_size]
                logits = self.model(x, training=False)
                correct += int(np.sum(np.argmax(logits.numpy(), 1) == y))
                loss_sum += float(np.sum(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
            n = max(len(dataset), 1)
            return {"accuracy": correct / n, "loss": loss_sum / n}
        finally:
            for v, w in zip(self.model.trainable_variables, saved):
                v.assign(w)

    # -- the loop ---------------------------------------------------------------

    def _install_sigterm(self):
        def handler(signum, frame):
            self._stop_requested = True

        try:
            return signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not in the main thread
            return None

    def fit(self):
        """Trains to the configured number of steps (resuming if possible).

        SIGTERM is honoured within seconds, also in the middle of an
        accounting computation: the step in hand finishes, a checkpoint is
        saved and ``fit`` returns None (``stopped_by_signal`` is True).

        Returns:
          The run record (see ``record``), or None when stopped by SIGTERM.
        """
        self._consecutive_nonfinite = 0
        self.restore()
        previous = self._install_sigterm()
        bar = self._progress_bar()
        try:
            while self.step < self.total_steps and not self._stop_requested:
                if not self._within_budget():
                    break
                t0 = time.time()
                self.train_step(self.step)
                self.wall_time_s += time.time() - t0
                self._after_step(bar)
        except accounting.AccountingInterrupted:
            pass  # SIGTERM arrived during accounting; the state is that of self.step
        finally:
            if bar is not None:
                bar.close()
            if self._summary_writer is not None:
                self._summary_writer.flush()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self.run_dir:
            self.save_checkpoint()
        if self._stop_requested:
            print(f"SIGTERM: checkpoint saved at step {self.step}; exiting.", file=sys.stderr)
            return None
        return self.record()

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        # No rate, elapsed or remaining time: a step's duration grows with its
        # realised Poisson batch size, which depends on the private data.
        return tqdm(total=self.total_steps, initial=self.step, desc="DP-SGD" if self.private else "SGD",
                    unit="step", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps{postfix}")

    def _accounting(self, fn):
        """``fn()`` (an accountant call), abandoned with AccountingInterrupted if SIGTERM arrives."""
        return accounting.run_interruptibly(fn, lambda: self._stop_requested)

    def _within_budget(self):
        if not self.private or self._accounting(self.ledger.can_step):
            return True
        print(f"Privacy budget reached at step {self.step}: stopping "
              f"(epsilon={self._accounting(self.ledger.epsilon):.4f}).", file=sys.stderr)
        return False

    def _after_step(self, bar):
        """History, TensorBoard, progress bar and checkpoint after a step (``self.step`` is the count done)."""
        cfg = self.config
        # Only public quantities and evaluation-split metrics: the history is
        # published in the card (no realised batch sizes, norms or per-step
        # timings). Its epsilon is the accountant's bound from the precomputed
        # curve (exact at the last step); the record's is always exact.
        eps = None
        if self.private:
            eps = self._accounting(self.ledger.epsilon if self.step == self.total_steps
                                   else self.ledger.epsilon_upper)
        entry = {"step": self.step, "epsilon": eps, "loss": None, "eval_accuracy": None,
                 "eval_accuracy_ema": None}
        do_eval = self.eval_data is not None and cfg.eval_every and self.step % cfg.eval_every == 0
        if do_eval:
            ev = self.evaluate(self.eval_data, "last")
            entry["eval_accuracy"], entry["loss"] = ev["accuracy"], ev["loss"]
            if self.ema_vars is not None:
                entry["eval_accuracy_ema"] = self.evaluate(self.eval_data, "ema")["accuracy"]
        if do_eval or self.step % max(1, cfg.checkpoint_every) == 0 or self.step == self.total_steps:
            self.history.append(entry)
            self._log_scalars(entry)
        if bar is not None:
            bar.update(1)
            post = {} if eps is None else {"eps<=": f"{eps:.3f}"}
            if entry["eval_accuracy"] is not None:
                post["acc"] = f"{entry['eval_accuracy']:.3f}"
            bar.set_postfix(post)
        if self.run_dir and self.step % max(1, cfg.checkpoint_every) == 0:
            self.save_checkpoint()

    def _log_scalars(self, entry):
        """TensorBoard scalars under ``run_dir/tensorboard`` at the history's log points.

        Only the epsilon and the metrics on the evaluation split, on the
        public log schedule. No speed: a step's duration depends on its
        realised batch size. (Event files carry their write times: totals
        over the log interval, operational like the run's wall time.)
        """
        if self.run_dir is None or not self.write_run_dir:
            return
        if self._summary_writer is None:
            self._summary_writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard"))
        with self._summary_writer.as_default(step=self.step):
            if entry["epsilon"] is not None:
                tf.summary.scalar("privacy/epsilon", entry["epsilon"])
            for key in ("eval_accuracy", "eval_accuracy_ema", "loss"):
                if entry[key] is not None:
                    tf.summary.scalar("eval/" + ("loss" if key == "loss" else key[5:]), entry[key])

    @property
    def stopped_by_signal(self):
        return self._stop_requested

    def record(self):
        """The run record without "data"/"metrics" (the CLI adds those)."""
        tan = self.tan_simulation if self.config.tan_simulation_factor else None
        privacy = self.ledger.summary(tan_simulation=tan)
        privacy["l2_clip"] = float(self.config.dp.l2_clip) if self.private else None
        # Decided on the noisy update alone (post-processing): covered by the guarantee.
        privacy["nonfinite_steps_skipped"] = self.nonfinite_steps
        privacy["randomness"] = None if not self.private else (
            RANDOMNESS_REPRODUCIBLE if self.config.deterministic else RANDOMNESS_SECRET)
        if self.private and not self.add_noise:
            mark_not_private(privacy, "noise disabled", NOISELESS_DETAIL)
        elif self.private and self.config.deterministic:
            mark_not_private(privacy, "reproducible run", REPRODUCIBLE_DETAIL.format(seed=self.config.seed))
        from dp_zoo import __version__ as dp_zoo_version

        devices = [d.name for d in tf.config.list_logical_devices()]
        return {
            "schema_version": 1,
            "config": self.config.to_dict(),
            "privacy": privacy,
            "history": list(self.history),
            "model": {
                "architecture": self.config.model,
                "num_params": int(self.model.count_params()),
                "input_shape": list(self.train.input_shape),
                "num_classes": int(self.train.num_classes),
                "init_checkpoint": self.config.init_checkpoint,
            },
            "software": {
                "dp_zoo": dp_zoo_version,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "dp_accounting": accounting.dp_accounting_version(),
                "python": platform.python_version(),
            },
            "hardware": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "devices": devices,
                "num_replicas": int(self.strategy.num_replicas_in_sync),
            },
            "operational": operational(self.wall_time_s),
            "steps_planned": self.total_steps,
            "steps_completed": self.step,
        }
