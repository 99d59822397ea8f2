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
resume, which draws a new secret: run_secret.py), every journalled step counts.

Checkpoints and the journal are written by ``dp_zoo.engine.checkpoint``; the
compiled step functions are built by ``dp_zoo.engine.step``; ``resolve``,
``run_secret``, ``evaluation``, ``reporting`` and ``record_sections`` (all in
``dp_zoo.engine``; the sampler is ``dp_zoo.data.sampling``) hold the rest of the
Trainer's pieces.
"""

import contextlib
import signal
import sys
import time

import tensorflow as tf

from dp_zoo import accounting, cli
from dp_zoo.data import sampling
from dp_zoo.engine import checkpoint, evaluation, optim, record_sections, reporting, resolve, resume, run_secret
from dp_zoo.engine import step as step_lib, trainable
from dp_zoo.engine.resume import TrainingError  # noqa: F401  (API: raised by fit and restore)

MAX_CONSECUTIVE_NONFINITE = 5


class Trainer:
    """Trains a Keras model with DP-SGD as docs/design.md defines it.

    Args:
      model: Keras model, normalized images -> logits, mixing no examples (BatchNorm only frozen).
      config: ``TrainConfig`` (only ``config.trainable``'s variables train).
      train: training ``Dataset`` (uint8 images, labels, mean/std) or ``linear_probe.FeatureSet``.
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
        (``config.tan_simulation_factor``), ``dp_zoo.engine.tan.tan_info``'s dict,
        stated in the record's privacy section.
    """

    def __init__(self, model, config, train, *, eval_data=None, augment_fn=None, run_dir=None,
                 strategy=None, progress=True, write_run_dir=True, prior_runs=(), add_noise=True,
                 tan_simulation=None):
        resolve.validate(config, train)
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():  # an unbuilt model's variables are created here, placed like the rest
            self.trained = trainable.apply(model, config.trainable, input_shape=train.input_shape)
        self.model = model
        self.config = config
        self.train = train
        self.eval_data = eval_data
        self.run_dir = run_dir
        self.write_run_dir = bool(write_run_dir)
        self.progress = progress
        self.augment_fn = augment_fn
        n = len(train)
        # The one resolution of steps, sigma and C (resolve.py); add_noise=False keeps the
        # configured sigma for the accounting (nominal epsilons) and draws none.
        self.plan = resolve.resolve_config(config, n, prior_runs, add_noise=add_noise)
        self.total_steps = self.plan.steps
        self.q = self.plan.sampling_probability
        self.private = self.plan.private
        self.noise_multiplier = self.plan.update_noise_multiplier
        self.ledger = accounting.PrivacyLedger(
            self.plan.noise_multiplier, self.q, self.plan.delta, n,
            target_epsilon=self.plan.target_epsilon, accountant=self.plan.accountant, sampling=config.dp.sampling,
            private=self.private, planned_steps=self.total_steps,
            prior_runs=tuple(prior_runs) if self.private else (),
        )
        self.add_noise = bool(add_noise)
        self.tan_simulation = tan_simulation
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
        self.spec = step_lib.StepSpec.for_run(self.plan, cfg)  # what one logical step computes
        with self.strategy.scope():
            self.optimizer = optim.make_optimizer(cfg.optim, self.total_steps)
            self.optimizer.build(self.model.trainable_variables)
            # In the strategy's scope, so the averages are mirrored like the weights.
            self.averages = step_lib.make_averages(self.model.trainable_variables, cfg.ema)
            self.clip_state = step_lib.make_clip_state(self.spec)
        self.ema_vars, self.polyak_vars, self.polyak_count = self.averages
        self.mean = tuple(self.train.mean)
        self.std = tuple(self.train.std)
        self._compile_fns()

    def _compile_fns(self):
        if getattr(self.train, "features", False):
            views = step_lib.prepared_views  # linear probing: [b, K, D] features, the K views already made
        else:
            views = step_lib.normalized_views(self.mean, self.std, self.augment_fn, self.config.augmult.num_views)
        fns = step_lib.build_step_functions(self.model, self.optimizer, self.spec, self.averages,
                                            strategy=self.strategy, views=views, clip_state=self.clip_state)
        self._step_fns = fns
        self._local_sum, self._distributed_sum, self._apply = fns

    def _setup_randomness(self):
        """The run's secret (``run_secret.run_secret``, docs/privacy.md) and its Poisson sampler."""
        self.secret = run_secret.run_secret(self.config, self.strategy, self.run_dir, self.write_run_dir)
        if self.secret is None:
            raise TrainingError(run_secret.NO_AGREEMENT)
        self.sampler = sampling.PoissonSampler(len(self.train), self.q, self.secret,
                                               self.config.physical_batch_size)

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
        meta = {"ledger": self.ledger.to_dict(), "config": self.config.to_dict(), "history": self.history,
                "wall_time_s": self.wall_time_s, "nonfinite_steps": self.nonfinite_steps,
                "noise_multiplier": self.noise_multiplier}
        arrays = checkpoint.state_arrays(self.model, self.optimizer, self.averages, self.clip_state)
        return checkpoint.save(checkpoint.checkpoint_dir(self.run_dir), self.step, arrays, meta)

    def restore(self):
        """Resumes from the newest good checkpoint in ``run_dir``; returns its step or None (``resume.restore``)."""
        return resume.restore(self)

    def _journal_spent(self, replayable=True):
        return checkpoint.journal_spent(self.run_dir, self.ledger, self._replay_identity, replayable)

    # -- evaluation -------------------------------------------------------------

    def weights_for(self, params="last"):
        """The ``params`` weights ("last", "ema" or "polyak") as numpy arrays, in trained-variable order."""
        return evaluation.weights_for(self.model, self.ema_vars, self.polyak_vars, params)

    def model_for(self, params="last"):
        """A copy of the model carrying the ``params`` weights ("last", "ema" or "polyak")."""
        return evaluation.model_copy(self.model, self.train.input_shape, self.weights_for(params))

    def evaluate(self, dataset, params="last", batch_size=512):
        """Accuracy and mean loss of ``params`` weights on ``dataset``."""
        return evaluation.evaluate(self.model, self.weights_for(params), dataset, self.mean, self.std,
                                   batch_size)

    # -- the loop ---------------------------------------------------------------

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
        self._say_resumed()
        previous = resume.install_stop_handlers(self)
        bar = self._progress_bar()
        first = self.progress
        try:
            while self.step < self.total_steps and not self._stop_requested:
                if not self._within_budget():
                    break
                t0 = time.time()
                # The first step traces and compiles the DP step (seconds to minutes): say so.
                with (cli.announce_after(2.0, "\nTracing and compiling the DP step (only the first step is slow)...")
                      if first else contextlib.nullcontext()):
                    self.train_step(self.step)
                first = False
                self.wall_time_s += time.time() - t0
                self._after_step(bar)
        except accounting.AccountingInterrupted:
            pass  # SIGTERM arrived during accounting; the state is that of self.step
        finally:
            if bar is not None:
                bar.close()
            if self._summary_writer is not None:
                self._summary_writer.flush()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.run_dir:
            self.save_checkpoint()
        if self._stop_requested:
            return None
        return self.record()

    def _say_resumed(self):
        """One line when ``fit`` continues an earlier run of this run directory."""
        if self.step and self.write_run_dir:
            print(f"Resumed {self.run_dir} from its checkpoint at step {self.step} of {self.total_steps}.")
        elif self.ledger.steps and self.private and self.write_run_dir:
            print(f"{self.run_dir} has no usable checkpoint: training restarts at step 0, and the "
                  f"{self.ledger.steps} step(s) its privacy journal records stay counted in epsilon.")

    def _progress_bar(self):
        return reporting.progress_bar(self.total_steps, self.step, self.private) if self.progress else None

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
        if self.clip_state is not None:  # adaptive C_t: post-processing of the noisy counts
            entry["l2_clip"] = float(self.clip_state.numpy())
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
            reporting.update_bar(bar, eps, entry)
        if self.run_dir and self.step % max(1, cfg.checkpoint_every) == 0:
            self.save_checkpoint()

    def _log_scalars(self, entry):
        """TensorBoard scalars at the history's log points (``reporting.log_scalars``)."""
        # Only the process that writes run_dir logs: workers never race on its files.
        if self.run_dir is None or not self.write_run_dir:
            return
        self._summary_writer = reporting.log_scalars(self._summary_writer, self.run_dir, self.step, entry)

    @property
    def stopped_by_signal(self):
        """True when SIGTERM or Ctrl-C stopped ``fit`` (a checkpoint of ``step`` was saved)."""
        return bool(self._stop_requested)

    @property
    def stop_signal(self):
        """"SIGTERM" or "SIGINT" when a signal stopped ``fit``, else None."""
        return self._stop_requested or None

    def record(self):
        """The run record without "data"/"metrics" (the CLI adds those; ``record_sections.engine_sections``)."""
        return record_sections.engine_sections(
            config=self.config, ledger=self.ledger, model=self.model, train=self.train, strategy=self.strategy,
            history=self.history, wall_time_s=self.wall_time_s, steps_planned=self.total_steps,
            steps_completed=self.step, nonfinite_steps=self.nonfinite_steps, add_noise=self.add_noise,
            tan_simulation=self.tan_simulation, trained=self.trained, clipping=self.plan.clipping,
            final_l2_clip=None if self.clip_state is None else float(self.clip_state.numpy()))
