"""``python -m dp_zoo.tune``: private hyper-parameter tuning whose epsilon covers the search.

Example::

    python -m dp_zoo.tune --recipe wrn_digits_eps8 --grid lr=0.5,1,2 --grid steps=60,120 \\
        --trials poisson:3

The mechanism (Papernot & Steinke 2022; ``dp_zoo.accounting.tuning`` has the
theorems, docs/privacy.md "Hyper-parameter tuning" the argument):

1. K, the number of trials, is drawn from ``--trials`` (Poisson or truncated
   negative binomial) with a secret from OS entropy, never from the public
   seed. K = 0 publishes nothing: that is one of the mechanism's outputs.
2. Each trial draws a grid point uniformly at random (secretly) and runs
   DP-SGD on the training split (the recipe's training data minus the last
   ``--validation-size`` examples) at the per-trial sigma that ``calibrate``
   finds for the TOTAL ``--epsilon``.
3. Its score is the count of correct validation predictions plus Gaussian
   noise of std ``--score-noise`` (sensitivity 1), composed additively with
   the run's RDP.
4. Only the best-scoring trial's model is published, with its card: the
   headline epsilon is the total; ``privacy.tuning`` states the method, the
   trial distribution, the trials run, the grid, the per-trial and total
   epsilon and the score mechanism. No other trial's score, model or
   accuracy leaves the tuner.

The trials' run directories (``--run-dir``, default ``runs/<name>_tune``) are
private like any run directory.
"""

import dataclasses
import itertools
import os
import secrets
import sys

from dp_zoo import cli
from dp_zoo.accounting import tuning

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


def grid_runs(base, grid, sigma, train_size):
    """The DP-SGD runs ``((sigma, q, steps), ...)`` of the grid's distinct (batch, steps) at ``sigma``."""
    shapes = sorted({(c.batch_size, c.steps) for c in (point_config(base, p) for p in grid)})
    return tuple((float(sigma), b / train_size, int(s)) for b, s in shapes)


def base_config(recipe_config, *, validation_size, model=None):
    """The recipe's config as every trial starts from it: a validation split held out, no
    evaluation during training (it would publish validation accuracy), RDP accounting."""
    if not recipe_config.dp.enabled:
        raise ValueError("the recipe is not private; tuning is for private recipes.")
    if validation_size < 1:
        raise ValueError("--validation-size must be >= 1 (the score is computed on it).")
    if recipe_config.init_checkpoint:
        # The trials would start from it without composing its privacy (train/init_privacy.py).
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


def tuning_section(*, dist, trials, grid, runs, score_noise, validation_size, delta, selected=None,
                   noisy_score=None):
    """The run record's ``privacy.tuning`` (everything public; ``noisy_score`` is the released one)."""
    rdp = tuning.trial_rdp(runs, score_noise)
    return {
        "method": tuning.METHOD,
        "trial_distribution": dist.to_dict(),
        "trials_run": int(trials),
        "grid": grid,
        "runs": [{"noise_multiplier": s, "sampling_probability": q, "steps": n} for s, q, n in runs],
        "per_trial_epsilon": tuning.epsilon_from_rdp(tuning.ORDERS, rdp, delta)[0],
        "total_epsilon": tuning.epsilon_from_rdp(tuning.ORDERS, tuning.tuned_rdp(tuning.ORDERS, rdp, dist), delta)[0],
        "accountant": "rdp",
        "score": {"mechanism": SCORE_MECHANISM, "noise_std": float(score_noise),
                  "validation_size": int(validation_size),
                  "noisy_accuracy": None if noisy_score is None else noisy_score / validation_size},
        "selected": selected,
    }


def apply_tuning(privacy, section, target_epsilon):
    """Makes the tuned total the record's epsilon (the selected trial's own stays under ``tuning``)."""
    section["selected_trial_epsilon"] = {"pld": privacy.get("epsilon_pld"), "rdp": privacy.get("epsilon_rdp")}
    privacy.update(epsilon=section["total_epsilon"], epsilon_rdp=section["total_epsilon"], epsilon_pld=None,
                   accountant="rdp", target_epsilon=target_epsilon, tuning=section)
    return privacy


class StoppedError(RuntimeError):
    """The tuning was stopped (SIGTERM) before its last trial; nothing was published."""


class Tuner:
    """One tuning job (``run``); ``secret`` (>= 16 bytes) defaults to fresh OS entropy."""

    def __init__(self, name, recipe, grid, dist, *, target_epsilon, validation_size, score_noise,
                 options, model=None, secret=None):
        from dp_zoo.train import data as data_lib

        self.name, self.recipe, self.grid, self.dist = name, recipe, grid, dist
        self.target_epsilon, self.score_noise, self.options = float(target_epsilon), float(score_noise), options
        self.base = base_config(recipe.config, validation_size=validation_size, model=model)
        for p in grid:
            if point_config(self.base, p).steps is None:
                raise ValueError("the recipe sets epochs, not steps: add --grid steps=... .")
        self.train_set = data_lib.load_dataset(self.base.data, "train")
        self.val_set = data_lib.load_dataset(self.base.data, "validation")
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        n, delta = len(self.train_set), self.base.dp.delta
        self.sigma = tuning.calibrate(self.target_epsilon, lambda s: grid_runs(self.base, grid, s, n),
                                      self.score_noise, dist, delta)
        self.runs = grid_runs(self.base, grid, self.sigma, n)

    def run(self):
        """Runs the trials and publishes the best; returns its run record (None when K = 0)."""
        trials = tuning.draw_trials(self.dist, tuning.trial_rng(self._secret, "trials"))
        section = tuning_section(dist=self.dist, trials=trials, grid=self.grid, runs=self.runs,
                                 score_noise=self.score_noise, validation_size=len(self.val_set),
                                 delta=self.base.dp.delta)
        print(f"Tuning {self.name}: {len(self.grid)} grid points, sigma={self.sigma:.4f} per trial "
              f"(epsilon {section['per_trial_epsilon']:.4f} each), total epsilon {section['total_epsilon']:.4f} "
              f"<= {self.target_epsilon:g}, delta={self.base.dp.delta:g}; {trials} trial(s) drawn.")
        if trials == 0:
            print("0 trials drawn (secretly, from the trial distribution): nothing is published. This is one "
                  "of the mechanism's outputs; the guarantee covers it. Run again to draw again.")
            return None
        best = self._trials(trials)
        return self._finish(best, section)

    def _trials(self, trials):
        from dp_zoo.train import engine, evaluation, run

        run_dir = self.options.run_dir or os.path.join("runs", f"{self.name}_tune")
        if os.path.exists(run_dir):
            raise FileExistsError(f"{run_dir} exists; tuning never resumes (K would be redrawn). "
                                  "Remove it or pass another --run-dir.")
        pick, noise = tuning.trial_rng(self._secret, "grid"), tuning.trial_rng(self._secret, "score")
        strategy = run.make_strategy()
        best = None
        for i in range(trials):
            point = self.grid[int(pick.integers(len(self.grid)))]
            config = point_config(self.base, point)
            config = config.replace(dp=dataclasses.replace(config.dp, noise_multiplier=self.sigma))
            trainer = engine.Trainer(run._build_model(config, self.train_set, strategy), config, self.train_set,
                                     augment_fn=_augment(config), run_dir=os.path.join(run_dir, f"trial_{i}"),
                                     strategy=strategy, progress=False)
            record = trainer.fit()
            if record is None:  # SIGTERM or Ctrl-C: a tuning never resumes (K would be redrawn)
                raise StoppedError(
                    f"stopped by {trainer.stop_signal} in trial {i + 1}/{trials}; nothing is published. The trials run "
                    "so far touched the data: a new tuning of the same data composes with them (docs/privacy.md).")
            weights = evaluation.published_weights(trainer.ema_vars)
            correct = round(trainer.evaluate(self.val_set, weights)["accuracy"] * len(self.val_set))
            score = correct + float(noise.normal(0.0, self.score_noise))
            # Only the count of trials run is printed: scores are released for the winner alone.
            print(f"trial {i + 1}/{trials} done")
            if best is None or score > best[0]:
                best = (score, trainer, record, point, run_dir)
        return best

    def _finish(self, best, section):
        from dp_zoo import run_record
        from dp_zoo.train import checkpoint, run
        from dp_zoo.train import data as data_lib

        score, trainer, record, point, run_dir = best
        test_set = data_lib.load_dataset(trainer.config.data, "test")
        run._complete_record(record, trainer, self.train_set, test_set, "test", None, self.name)
        section.update(selected=point, score={**section["score"], "noisy_accuracy": score / len(self.val_set)})
        apply_tuning(record["privacy"], section, self.target_epsilon)
        record["weights_sha256"] = run.weights_sha256(trainer.model)
        run_record.check_run_record(record)
        checkpoint.atomic_write_json(os.path.join(run_dir, "run_record.json"), record)
        run._report(record, "test", None)
        print(f"privacy: the epsilon above is the TOTAL over the tuning ({section['trials_run']} trial(s)); "
              f"selected {point}, noisy validation accuracy {section['score']['noisy_accuracy']:.4f}")
        if self.options.publish:
            run._publish(trainer.model_for(record["published_weights"]), record, self.name, self.options)
        return record


def _augment(config):
    from dp_zoo.train import data as data_lib

    return data_lib.make_augment_fn(config.augmult)


def _parser():
    p = cli.Parser("dp_zoo.tune", prog="python -m dp_zoo.tune", description=__doc__.split("\n\n")[0])
    p.option("recipe", required=True, help="the private recipe to tune (python -m dp_zoo.train --list-recipes)")
    p.option("grid", action="append", metavar="KEY=V1,V2", help=f"grid axis; KEY in {sorted(GRID_KEYS)} (repeatable)")
    p.option("trials", default="poisson:3", help="poisson:MEAN or negbin:ETA,GAMMA (default poisson:3)")
    p.option("epsilon", type=float, help="TOTAL epsilon, tuning included (default: the recipe's)")
    p.option("validation-size", type=int, default=300, help="training examples held out for the score")
    p.option("score-noise", type=float, default=10.0, help="std of the noise on the correct-count score")
    p.option("model", help="swap the recipe's architecture (e.g. wrn_test)")
    p.option("name", help="the published entry's name (default: the recipe's)")
    p.option("run-dir", help="the trials' private run directories (default runs/<name>_tune)")
    p.option("publish-dir", help="where to publish (default: as python -m dp_zoo.train)")
    p.switch("publish", default=True, help="publish the selected model with its card")
    p.switch("overwrite", default=False, help="replace an existing artifact in --publish-dir")
    return p


def main(argv=None):
    """Runs ``python -m dp_zoo.tune`` with ``argv``; returns the exit status."""
    from absl import logging

    args = _parser().parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # dp-accounting's excluded-order warnings
    from dp_zoo.train import recipes, run

    try:
        recipe = recipes.get(args.recipe)
        grid, dist = parse_grid(args.grid), tuning.TrialDistribution.parse(args.trials)
        target = args.epsilon if args.epsilon is not None else recipe.config.dp.target_epsilon
        if target is None or not target > 0:
            raise ValueError("pass the total budget with --epsilon (the recipe names none).")
        if not args.score_noise > 0:
            raise ValueError("--score-noise must be > 0.")
        options = run.RunOptions(run_dir=args.run_dir, publish=args.publish, publish_dir=args.publish_dir,
                                 overwrite=args.overwrite, progress=False)
        tuner = Tuner(args.name or recipe.name, recipe, grid, dist, target_epsilon=target,
                      validation_size=args.validation_size, score_noise=args.score_noise,
                      options=options, model=args.model)
        tuner.run()
    except (ValueError, FileExistsError, StoppedError) as e:
        print(f"dp_zoo.tune: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
