"""``python -m dp_zoo.audit`` (and ``dp-zoo-audit``): audit a recipe or the ``audit_small`` preset."""

import json
import math
import sys

from dp_zoo import cli
from dp_zoo.audit.run import AUDIT_SMALL, NOT_PRIVATE_BANNER, attach_to_record, load_train, resolve_config, run_audit


def _parser():
    p = cli.Parser("dp_zoo.audit",
                   description="Empirical privacy audit of a training configuration with one run "
                               "(Steinke, Nasr, Jagielski 2023).")
    p.option("recipe", default=AUDIT_SMALL,
             help=f"recipe from dp_zoo/recipes/recipes.py, or {AUDIT_SMALL!r} (default: a tiny "
                  "WRN on 300 digits, 300 steps, eps=2; ~1 min).")
    p.option("canaries", type=int, default=200, help="number of canaries m (default 200).")
    p.option("steps", type=int, default=None, help="training steps (default: the recipe's).")
    p.option("epsilon", type=float, default=None, help="target epsilon (default: the recipe's).")
    p.option("train-size", type=int, default=None,
             help="use only the first N real training examples (default: the recipe's data).")
    p.option("guess-fraction", type=float, default=0.25,
             help="guesses per side as a fraction of m, fixed before training (default 0.25).")
    p.option("confidence", type=float, default=0.95, help="confidence of the bound (default 0.95).")
    p.option("seed", type=int, default=0, help="canary and coin seed (default 0).")
    p.option("params", choices=("last", "ema", "polyak"), default="last", help="weights to score.")
    p.switch("noise", default=True,
             help="--no-noise: a deliberately NON-PRIVATE engine (noise off, clipping kept), to show the "
                  "audit's power.")
    p.switch("json", default=False, help="print the result as JSON.")
    p.option("out", default=None, help="also write the JSON result to this file.")
    p.option("attach-to", default=None,
             help="store the result under 'audit' in this run_record.json (its config must be the recipe's).")
    return p


def _validate_args(a):
    if a.canaries < 2:
        raise ValueError(f"--canaries must be >= 2, got {a.canaries}.")
    if a.steps is not None and a.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {a.steps}.")
    if a.epsilon is not None and not (math.isfinite(a.epsilon) and a.epsilon > 0):
        raise ValueError(f"--epsilon must be > 0, got {a.epsilon}.")
    if not 0 < a.guess_fraction <= 0.5:
        raise ValueError(f"--guess-fraction must be in (0, 0.5], got {a.guess_fraction}.")
    if round(a.guess_fraction * a.canaries) < 1:
        raise ValueError(f"--guess-fraction {a.guess_fraction} of {a.canaries} canaries makes no guesses.")
    if not 0 < a.confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {a.confidence}.")
    if not a.noise and a.attach_to:
        raise ValueError("--no-noise cannot be combined with --attach-to (a non-private run is no audit of a model).")


def main(argv=None):
    """Runs the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        _validate_args(args)
        cfg, n = resolve_config(args.recipe, steps=args.steps, epsilon=args.epsilon)
        if args.train_size is not None:
            n = args.train_size
        train = load_train(cfg, n)
    except ValueError as e:
        print(f"dp_zoo.audit: error: {e}", file=sys.stderr)
        return 2
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # dp-accounting's per-order RDP warnings
    if not args.noise:
        print(f"WARNING: {NOT_PRIVATE_BANNER}. This run trains WITHOUT noise to check that the audit "
              "can detect a non-private engine; its result is not a privacy guarantee.", file=sys.stderr)
    try:
        result = run_audit(cfg, train, num_canaries=args.canaries, guess_fraction=args.guess_fraction,
                           confidence=args.confidence, seed=args.seed, noise=args.noise,
                           recipe=args.recipe, params=args.params,
                           # The engine's bar shows the ledger's epsilon, which a noiseless
                           # run does not have: no bar there, so nothing suggests a guarantee.
                           progress=args.noise and not args.json and sys.stderr.isatty())
        if args.attach_to:
            attach_to_record(result, args.attach_to)
    except (ValueError, OSError) as e:
        print(f"dp_zoo.audit: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    d = result.to_dict()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
    print(json.dumps(d, indent=2, sort_keys=True) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
