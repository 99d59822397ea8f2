"""``python -m dp_zoo.tune``: private hyper-parameter tuning whose epsilon covers the search.

Example::

    python -m dp_zoo.tune --recipe wrn_digits_eps8 --space digits_public --trials poisson:3

This module turns the command line into a ``Tuner`` (``dp_zoo/jobs/tuning.py``,
which states the mechanism and what stays private) and runs it.
"""

import dataclasses
import sys

from dp_zoo import cli
from dp_zoo.commands import train_flags
from dp_zoo.jobs.tuning import (  # noqa: F401  (the rest: dp_zoo.tune's names before issue #29)
    CALIBRATION, GRID_KEYS, NO_TIMING, NUMBER_OF_TRIALS, PRIVATE_CONSOLE, PRIVATE_LOG, PRIVATE_NOTE,
    SCORE_MECHANISM, StoppedError, Tuner, apply_tuning, base_config, grid_shapes, parse_grid, point_config,
    point_shape, tuning_section)
from dp_zoo.recipes import search_spaces


def _parser():
    p = cli.Parser("dp_zoo.tune", prog="python -m dp_zoo.tune", description=__doc__.split("\n\n")[0])
    p.option("recipe", required=True, help="the private recipe to tune (python -m dp_zoo.train --list-recipes)")
    p.option("grid", action="append", metavar="KEY=V1,V2", help=f"grid axis; KEY in {sorted(GRID_KEYS)} (repeatable)")
    p.option("space", help="a named search space from public sources: base configuration and grid "
             f"(one of {sorted(search_spaces.SPACES)}; dp_zoo/recipes/search_spaces.py)")
    p.option("search-space-source", help="with --grid: where the base configuration and grid came from "
             "(public sources, cited); the card states it")
    p.option("trials", default="poisson:3",
             help="poisson:MEAN (conditioned on K >= 1) or negbin:ETA,GAMMA (default poisson:3)")
    p.option("epsilon", type=float, help="TOTAL epsilon, tuning included (default: the recipe's)")
    p.option("validation-size", type=int, default=300, help="training examples held out for the score")
    p.option("score-noise", type=float, default=10.0, help="std of the noise on the correct-count score")
    p.option("model", help="swap the recipe's architecture (e.g. wrn_test)")
    p.option("name", help="the published entry's name (default: the recipe's)")
    p.option("run-dir", help="the trials' private run directories (default runs/<name>_tune)")
    p.option("publish-dir", help="where to publish (default: as python -m dp_zoo.train)")
    for o in train_flags.CLIPPING_OVERRIDES:
        p.option(o.flag, type=o.type, help=f"{o.help} (every trial)")
    p.switch("publish", default=True, help="publish the selected model with its card")
    p.switch("overwrite", default=False, help="replace an existing artifact in --publish-dir")
    return p


def _with_clipping(config, args):
    """``config`` with the clipping flags it was given (``train_flags.CLIPPING_OVERRIDES``)."""
    changes = {}
    for o in train_flags.CLIPPING_OVERRIDES:
        v = getattr(args, o.flag.replace("-", "_"))
        if v is not None:
            changes[o.field.split(".", 1)[1]] = o.check(o.flag, v)
    return config.replace(dp=dataclasses.replace(config.dp, **changes)) if changes else config


def _search_space(args, recipe):
    """(base config, --grid items, search-space source) from ``--space`` or ``--grid`` with
    ``--search-space-source`` (ValueError naming the fix otherwise)."""
    if args.space:
        if args.grid or args.search_space_source:
            raise ValueError("--space fixes the grid and its source: drop --grid and --search-space-source, "
                             "or drop --space.")
        space = search_spaces.get(args.space, recipe.name)
        return space.apply(recipe.config), space.grid_items(), space.source
    if args.grid and not (args.search_space_source or "").strip():
        raise ValueError("say where the base configuration and grid came from: --search-space-source TEXT "
                         "(public sources; a choice made by looking at this data set is not covered), or use "
                         "--space NAME.")
    return recipe.config, args.grid, args.search_space_source


def main(argv=None):
    """Runs ``python -m dp_zoo.tune`` with ``argv``; returns the exit status."""
    args = _parser().parse_args(argv)  # before the imports below: a bad flag fails at once
    from absl import logging

    from dp_zoo.accounting import tuning  # dp-accounting: seconds to import
    logging.set_verbosity(logging.ERROR)  # dp-accounting's excluded-order warnings
    from dp_zoo.jobs import training as run
    from dp_zoo.recipes import recipes

    try:
        recipe = recipes.get(args.recipe)
        config, grid_items, source = _search_space(args, recipe)
        config = _with_clipping(config, args)
        grid, dist = parse_grid(grid_items), tuning.TrialDistribution.parse(args.trials)
        target = args.epsilon if args.epsilon is not None else recipe.config.dp.target_epsilon
        if target is None or not target > 0:
            raise ValueError("pass the total budget with --epsilon (the recipe names none).")
        if not args.score_noise > 0:
            raise ValueError("--score-noise must be > 0.")
        options = run.RunOptions(run_dir=args.run_dir, publish=args.publish, publish_dir=args.publish_dir,
                                 overwrite=args.overwrite, progress=False)
        tuner = Tuner(args.name or recipe.name, recipe, grid, dist, target_epsilon=target,
                      validation_size=args.validation_size, score_noise=args.score_noise,
                      options=options, search_space_source=source, config=config, model=args.model)
        tuner.run()
    except (ValueError, FileExistsError, StoppedError) as e:
        print(f"dp_zoo.tune: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
