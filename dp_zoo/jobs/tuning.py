"""Private hyper-parameter tuning whose epsilon covers the search: the ``Tuner`` (``python -m dp_zoo.tune``).

Example::

    python -m dp_zoo.tune --recipe wrn_digits_eps8 --space digits_public --trials poisson:3

The mechanism (Papernot & Steinke 2022; ``dp_zoo.accounting.tuning`` has the
theorems, docs/privacy.md "Hyper-parameter tuning" the argument):

1. K, the number of trials, is drawn from ``--trials`` (Poisson conditioned
   on K >= 1, or the truncated negative binomial) with a secret from OS
   entropy, never from the public seed. K is part of the secret: the
   theorem covers releasing the best trial with K hidden, so nothing that
   depends on K is printed, written to the card, the record or TensorBoard
   (no trial count, no per-trial line, no per-trial or total timing). Only
   its distribution and E[K] are published.
2. Each trial draws a grid point uniformly at random (secretly) and runs
   DP-SGD on the training split (the recipe's training data minus the last
   ``--validation-size`` examples) at that point's own sigma:
   ``tuning_calibration.calibrate_points`` gives every point one common
   per-trial epsilon, the largest whose TOTAL meets ``--epsilon``.
3. Its score is the count of correct validation predictions plus Gaussian
   noise of std ``--score-noise`` (sensitivity 1), composed additively with
   the run's RDP.
4. Only the best-scoring trial's model is published, with its card: the
   headline epsilon is the total; ``privacy.tuning`` states the method, the
   trial distribution and E[K], the grid, every point's (sigma, q, steps,
   epsilon), the per-trial and total epsilon, the score mechanism and where
   the base configuration and grid came from (``--space`` or
   ``--search-space-source``). No other trial's score, model or accuracy
   leaves the tuner.

The run directory (``--run-dir``, default ``runs/<name>_tune``) is private
like any run directory: it holds the trials, ``PRIVATE_tuning_log.json``
(K, the trials' timings) and ``PRIVATE_trials_console.log`` (whatever the
trials printed), which must never be published.
"""

import contextlib
import dataclasses
import io
import itertools
import os
import secrets
import sys
import time

from dp_zoo import cli
from dp_zoo.engine import record_builder

# --grid keys: how each sets a TrainConfig field, and the value's type.
GRID_KEYS = {
    "lr": (float, lambda c, v: c.replace(optim=dataclasses.replace(c.optim, learning_rate=v))),
    "steps": (int, lambda c, v: c.replace(steps=v, epochs=None)),
    "batch_size": (int, lambda c, v: c.replace(batch_size=v, physical_batch_size=min(c.physical_batch_size, v))),
    "l2_clip": (float, lambda c, v: c.replace(dp=dataclasses.replace(c.dp, l2_clip=v))),
    "ema_decay": (float, lambda c, v: c.replace(ema=dataclasses.replace(c.ema, decay=v))),
}
SCORE_MECHANISM = ("count of correct validation predictions (published weights) + Gaussian noise, "
                   "sensitivity 1, composed additively with the trial's DP-SGD RDP")
NUMBER_OF_TRIALS = ("secret: drawn from trial_distribution with OS entropy and never published (the guarantee "
                    "is for the best trial released with the number of trials hidden); E[K] is public")
CALIBRATION = ("per grid point: each run's sigma is the smallest whose own RDP (training + score) converts to "
               "the common per-trial epsilon; the total is computed from the pointwise maximum of the "
               "points' RDP curves, which dominates each of them at every order")
NO_TIMING = record_builder.TUNED_TIMING_NOTE  # its old name
PRIVATE_LOG = "PRIVATE_tuning_log.json"
PRIVATE_CONSOLE = "PRIVATE_trials_console.log"
PRIVATE_NOTE = ("PRIVATE: the number of trials and their timings; publishing any of it voids the tuned "
                "card's epsilon (docs/privacy.md, 'Hyper-parameter tuning')")


def parse_grid(items):
    """The grid points (list of dicts) of ``--grid KEY=V1,V2`` items: their Cartesian product.

    Raises:
      ValueError: an unknown or repeated key, no values, or a value of the
        wrong type or sign (one line naming the fix).
    """
    axes = {}
    for item in items or ():
        key, eq, values = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in GRID_KEYS:
            raise ValueError(f"bad --grid {item!r}: use KEY=V1,V2 with KEY one of {sorted(GRID_KEYS)}.")
        if key in axes:
            raise ValueError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2.")
        kind = GRID_KEYS[key][0]
        try:
            vals = [kind(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"bad --grid {item!r}: {key} takes {kind.__name__} values, e.g. {key}=1,2.") from None
        if not vals or any(not v > 0 for v in vals) or len(set(vals)) != len(vals):
            raise ValueError(f"bad --grid {item!r}: give distinct positive values, e.g. {key}=1,2.")
        axes[key] = vals
    if not axes:
        raise ValueError("no --grid given: pass at least one, e.g. --grid lr=0.5,1,2.")
    keys = sorted(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def point_config(base, point):
    """``base`` with the grid ``point``'s values."""
    for key, value in point.items():
        base = GRID_KEYS[key][1](base, value)
    return base


def point_shape(config, train_size):
    """A point's run shape ``(q, steps)``: what its privacy depends on besides sigma."""
    return config.batch_size / train_size, int(config.steps)


def grid_shapes(base, grid, train_size):
    """The grid's distinct run shapes ``(q, steps)``."""
    return sorted({point_shape(point_config(base, p), train_size) for p in grid})


def base_config(recipe_config, *, validation_size, model=None):
    """The recipe's config as every trial starts from it: a validation split held out, no
    evaluation during training (it would publish validation accuracy), RDP accounting."""
    if not recipe_config.dp.enabled:
        raise ValueError("the recipe is not private; tuning is for private recipes.")
    if validation_size < 1:
        raise ValueError("--validation-size must be >= 1 (the score is computed on it).")
    if recipe_config.init_checkpoint:
        # The trials would start from it without composing its privacy (jobs/init_privacy.py).
        raise ValueError(f"the recipe starts from --init {recipe_config.init_checkpoint!r}; the tuner trains "
                         "from scratch only: tune a recipe without an initial checkpoint.")
    if recipe_config.linear_probe:
        raise ValueError("the recipe is a linear probe; the tuner runs full trainings only: tune the recipe "
                         "without _linear_probe.")
    c = recipe_config
    c = c.replace(eval_every=0, deterministic=False, tan_simulation_factor=None,
                  data=dataclasses.replace(c.data, validation_size=int(validation_size)),
                  dp=dataclasses.replace(c.dp, accountant="rdp", target_epsilon=None))
    return c.replace(model=model) if model else c


def tuning_section(*, dist, grid, runs, score_noise, validation_size, delta, search_space_source,
                   selected=None, noisy_score=None):
    """The run record's ``privacy.tuning``: public facts only (never K, nor anything that depends
    on it); ``runs`` are the grid's ``(sigma, q, steps)``, ``noisy_score`` the released one."""
    from dp_zoo.accounting import tuning, tuning_calibration  # dp-accounting: seconds to import
    rdp = tuning.trial_rdp(runs, score_noise)
    point_eps = tuning_calibration.per_point_epsilons(runs, score_noise, delta)
    return {
        "method": tuning.METHOD,
        "trial_distribution": dist.to_dict(),
        "number_of_trials": NUMBER_OF_TRIALS,
        "grid": grid,
        "search_space_source": search_space_source,
        "runs": [{"noise_multiplier": s, "sampling_probability": q, "steps": n, "epsilon": e}
                 for (s, q, n), e in zip(runs, point_eps)],
        "calibration": CALIBRATION,
        "per_trial_epsilon": tuning.epsilon_from_rdp(tuning.ORDERS, rdp, delta)[0],
        "total_epsilon": tuning.epsilon_from_rdp(tuning.ORDERS, tuning.tuned_rdp(tuning.ORDERS, rdp, dist), delta)[0],
        "accountant": "rdp",
        "score": {"mechanism": SCORE_MECHANISM, "noise_std": float(score_noise),
                  "validation_size": int(validation_size),
                  "noisy_accuracy": None if noisy_score is None else noisy_score / validation_size},
        "selected": selected,
    }


def apply_tuning(record, section, target_epsilon):
    """Makes the tuned total the record's epsilon (the selected trial's own stays under ``tuning``)
    and drops the selected trial's wall time (a per-trial timing: it can tell which trial won).

    ``RunRecordBuilder.set_tuning`` on ``record`` (in place; returns it)."""
    return record_builder.RunRecordBuilder.from_record(record).set_tuning(section, target_epsilon).build(check=False)


class StoppedError(RuntimeError):
    """The tuning was stopped (SIGTERM) before its last trial; nothing was published."""


class Tuner:
    """One tuning job (``run``); ``secret`` (>= 16 bytes) defaults to fresh OS entropy.

    ``config`` (default the recipe's) is the base configuration before the
    tuner's changes; ``search_space_source`` says where it and the grid came
    from (the card states it).
    """

    def __init__(self, name, recipe, grid, dist, *, target_epsilon, validation_size, score_noise,
                 options, search_space_source, config=None, model=None, secret=None):
        from dp_zoo import data as data_lib
        from dp_zoo.accounting import tuning_calibration  # dp-accounting: seconds to import

        if dist.prob_zero() > 0:
            raise ValueError("the trial distribution can draw K = 0, and rerunning until a model comes out is "
                             "another mechanism: use the zero-truncated Poisson (--trials poisson:MEAN).")
        if not str(search_space_source or "").strip():
            raise ValueError("say where the base configuration and grid came from (--search-space-source "
                             "TEXT, or --space NAME): the card states it.")
        self.name, self.recipe, self.grid, self.dist = name, recipe, grid, dist
        self.target_epsilon, self.score_noise, self.options = float(target_epsilon), float(score_noise), options
        self.search_space_source = str(search_space_source).strip()
        self.base = base_config(config or recipe.config, validation_size=validation_size, model=model)
        for p in grid:
            if point_config(self.base, p).steps is None:
                raise ValueError("the recipe sets epochs, not steps: add --grid steps=... .")
        self.train_set = data_lib.load_dataset(self.base.data, "train")
        self.val_set = data_lib.load_dataset(self.base.data, "validation")
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        n = len(self.train_set)
        self.sigmas = tuning_calibration.calibrate_points(
            self.target_epsilon, grid_shapes(self.base, grid, n), self.score_noise, dist, self.base.dp.delta)
        self.runs = tuple((self.sigmas[shape], *shape) for shape in grid_shapes(self.base, grid, n))

    def point_config(self, point):
        """The configuration a trial at ``point`` trains with, its own sigma included."""
        config = point_config(self.base, point)
        sigma = self.sigmas[point_shape(config, len(self.train_set))]
        return config.replace(dp=dataclasses.replace(config.dp, noise_multiplier=sigma))

    def run(self):
        """Runs the trials and publishes the best; returns its run record."""
        from dp_zoo.accounting import tuning  # dp-accounting: seconds to import
        section = tuning_section(dist=self.dist, grid=self.grid, runs=self.runs, score_noise=self.score_noise,
                                 validation_size=len(self.val_set), delta=self.base.dp.delta,
                                 search_space_source=self.search_space_source)
        sig = ", ".join(f"{n} steps at q={q:.4g}: sigma={s:.4f}" for s, q, n in self.runs)
        # The one line before the trials: all of it public (K is drawn after it and never shown).
        print(f"Tuning {self.name}: {len(self.grid)} grid points ({sig}); each trial's epsilon "
              f"{section['per_trial_epsilon']:.4f}, total epsilon {section['total_epsilon']:.4f} <= "
              f"{self.target_epsilon:g}, delta={self.base.dp.delta:g}. The number of trials is secret, drawn from "
              f"{self.dist.describe()} (E[K] = {self.dist.expected_trials():.3g}); nothing is printed per trial.",
              flush=True)
        run_dir = self.options.run_dir or os.path.join("runs", f"{self.name}_tune")
        if os.path.exists(run_dir):
            raise FileExistsError(f"{run_dir} exists; tuning never resumes (K would be redrawn). "
                                  "Remove it or pass another --run-dir.")
        os.makedirs(run_dir)
        trials = tuning.draw_trials(self.dist, tuning.trial_rng(self._secret, "trials"))
        # From here to the release, TensorFlow's and Python's output goes to the private run
        # directory (a warning per trace or per trial would show K by its count); only the
        # released result's lines, collected in ``public``, are printed.
        public = io.StringIO()
        with cli.output_to(os.path.join(run_dir, PRIVATE_CONSOLE)):
            best = self._trials(trials, run_dir)
            with contextlib.redirect_stdout(public):
                record = self._finish(best, section)
        sys.stdout.write(public.getvalue())
        sys.stdout.flush()
        return record

    def _trials(self, trials, run_dir):
        from dp_zoo.accounting import tuning  # dp-accounting: seconds to import
        from dp_zoo.engine import checkpoint, trainer as engine, evaluation
        from dp_zoo.jobs import strategy as strategy_lib, training as run

        pick, noise = tuning.trial_rng(self._secret, "grid"), tuning.trial_rng(self._secret, "score")
        strategy = strategy_lib.make_strategy()
        best, timings, points = None, [], []
        for i in range(trials):
            point = self.grid[int(pick.integers(len(self.grid)))]
            config = self.point_config(point)
            t0 = time.time()
            trainer = engine.Trainer(run._build_model(config, self.train_set, strategy), config, self.train_set,
                                     augment_fn=_augment(config), run_dir=os.path.join(run_dir, f"trial_{i}"),
                                     strategy=strategy, progress=False)
            # No TensorBoard for trials: K event directories beside each other would show K.
            trainer._log_scalars = _no_scalars
            record = trainer.fit()
            if record is None:  # SIGTERM or Ctrl-C: a tuning never resumes (K would be redrawn)
                raise StoppedError(
                    # No trial number: it would bound the secret number of trials K.
                    f"stopped by {trainer.stop_signal}; nothing is published. The trials run so far touched the "
                    "data: a new tuning of the same data composes with them (docs/privacy.md).")
            weights = evaluation.published_weights(trainer.ema_vars)
            correct = round(trainer.evaluate(self.val_set, weights)["accuracy"] * len(self.val_set))
            score = correct + float(noise.normal(0.0, self.score_noise))
            timings.append(round(time.time() - t0, 1))
            points.append(point)
            # Nothing is printed here: a line per trial would publish K.
            if best is None or score > best[0]:
                best = (score, trainer, record, point, run_dir, i)
        checkpoint.atomic_write_json(os.path.join(run_dir, PRIVATE_LOG), {
            "note": PRIVATE_NOTE, "trials": trials, "selected_trial": best[5], "trial_wall_time_s": timings,
            "points": points})
        return best[:5]

    def _finish(self, best, section):
        from dp_zoo import data as data_lib
        from dp_zoo.engine import checkpoint
        from dp_zoo.jobs import training as run

        score, trainer, record, point, run_dir = best
        test_set = data_lib.load_dataset(trainer.config.data, "test")
        builder = record_builder.RunRecordBuilder.from_record(record)
        run._complete_record(builder, trainer, self.train_set, test_set, "test", None, self.name)
        section.update(selected=point, score={**section["score"], "noisy_accuracy": score / len(self.val_set)})
        builder.set_tuning(section, self.target_epsilon)
        builder.set_weights(sha256=run.weights_sha256(trainer.model))
        record = builder.build()  # check_run_record: a tuned record publishes no trial count or timing
        checkpoint.atomic_write_json(os.path.join(run_dir, "run_record.json"), record)
        run._report(record, "test", None)
        print(f"privacy: the epsilon above is the TOTAL over the tuning (a secret number of trials, "
              f"E[K] = {self.dist.expected_trials():.3g}); selected {point}, noisy validation accuracy "
              f"{section['score']['noisy_accuracy']:.4f}")
        if self.options.publish:
            run._publish(trainer.model_for(record["published_weights"]), record, self.name, self.options, run_dir)
        return record


def _no_scalars(entry):
    """A trial's TensorBoard logger: writes nothing (see ``Tuner._trials``)."""


def _augment(config):
    from dp_zoo import data as data_lib

    return data_lib.make_augment_fn(config.augmult)
