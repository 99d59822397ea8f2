"""``python -m dp_zoo.privacy``: epsilon of a DP-SGD configuration, or the noise/steps for a budget.

Examples::

    # epsilon under RDP and PLD
    python -m dp_zoo.privacy --dataset-size 50000 --batch-size 4096 \
        --steps 875 --noise-multiplier 10 --delta 1e-5

    # the sigma that meets a budget (or, with --noise-multiplier, the steps)
    python -m dp_zoo.privacy --dataset-size 50000 --batch-size 4096 \
        --steps 875 --delta 1e-5 --target-epsilon 8

Add ``--json`` for a machine-readable answer. Poisson sampling with expected
batch B is assumed (q = B / N), as the engine does.
"""

import contextlib
import json
import logging
import math
import re
import sys
import warnings

from dp_zoo import cli

# accounting.ACCOUNTANTS, spelled out so that a bad command line is answered before
# dp-accounting and SciPy load (seconds); tests/test_privacy_cli.py checks they agree.
ACCOUNTANTS = ("pld", "rdp")
# PLD composition of this many steps takes about 20 s on 2 CPU cores (10**6: about 7 s) and grows
# without bound; above it the PLD epsilon is not computed (RDP answers at once, an upper bound).
PLD_MAX_STEPS = 10**7


def _parser():
    p = cli.Parser("dp_zoo.privacy",
                   description="Privacy accounting for DP-SGD with Poisson sampling (dp-accounting).")
    p.option("dataset-size", type=int, required=True, help="N, examples in the training set")
    p.option("batch-size", type=float, required=True, help="expected batch size B (q = B/N)")
    p.option("steps", type=int, help="number of noisy steps")
    p.option("noise-multiplier", type=float, help="sigma")
    p.option("delta", type=float, required=True)
    p.option("target-epsilon", type=float, help="calibrate sigma (or steps, if sigma is given)")
    p.option("accountant", choices=ACCOUNTANTS, default="pld",
             help="accountant used for calibration (default pld)")
    p.switch("json", default=False, help="print JSON")
    return p


def check_flags(args):
    """Refuses (ValueError naming the flag) values the accountant cannot take, before it is loaded."""
    if args.dataset_size < 1:
        raise ValueError("--dataset-size must be >= 1.")
    if not (math.isfinite(args.batch_size) and 0 < args.batch_size <= args.dataset_size):
        raise ValueError(
            f"--batch-size must be in (0, dataset size {args.dataset_size}], got {args.batch_size:g}."
        )
    if not (math.isfinite(args.delta) and 0 < args.delta < 1):
        raise ValueError(f"--delta must be in (0, 1), got {args.delta:g}; e.g. --delta 1e-5 for N=50,000 "
                         "(delta < 1/N).")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}.")
    for flag, value in (("noise-multiplier", args.noise_multiplier), ("target-epsilon", args.target_epsilon)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{flag} must be a finite number > 0, got {value:g}.")
    if args.target_epsilon is not None:
        if args.noise_multiplier is None and args.steps is None:
            raise ValueError("with --target-epsilon, pass --steps (to calibrate sigma) or --noise-multiplier "
                             "(to calibrate steps).")
        if args.noise_multiplier is not None and args.steps is not None:
            raise ValueError("with --target-epsilon, pass only one of --steps and --noise-multiplier: the other "
                             "is calibrated.")
        if args.accountant == "pld" and args.steps is not None and args.steps > PLD_MAX_STEPS:
            raise ValueError(f"--steps {args.steps} is beyond what the PLD accountant calibrates in reasonable time "
                             f"(at most {PLD_MAX_STEPS:,} steps); add --accountant rdp.")
    elif args.steps is None or args.noise_multiplier is None:
        raise ValueError("pass --steps and --noise-multiplier (or --target-epsilon to calibrate one of them).")


_EXCLUDED_ORDER = re.compile(r"Excluding this order")


@contextlib.contextmanager
def _absl_warnings_into(messages):
    """dp-accounting's absl warnings (one per excluded RDP order) collected into ``messages``, not printed."""
    logger = logging.getLogger("absl")
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        excluded = [m for m in records if _EXCLUDED_ORDER.search(m)]
        if excluded:
            orders = sorted({float(a) for m in excluded for a in re.findall(r"alpha=(\d+(?:\.\d+)?)", m)})
            messages.append(f"dp-accounting could not compute {len(excluded)} RDP order(s) (alpha "
                            f"{', '.join(f'{a:g}' for a in orders[:6])}{', ...' if len(orders) > 6 else ''}) and "
                            "excluded them; the RDP epsilon is the minimum over the other orders, still an upper "
                            "bound.")
        messages.extend(m for m in dict.fromkeys(records) if not _EXCLUDED_ORDER.search(m))


def compute(args):
    """Computes the answer dict for parsed ``args`` (raises ValueError on bad input).

    dp-accounting's warnings go into the answer's "warnings", not onto the
    terminal; a computation still running after 2 s says so on stderr.
    """
    check_flags(args)
    from dp_zoo import accounting

    q = args.batch_size / args.dataset_size
    out = {
        "dataset_size": args.dataset_size,
        "batch_size": args.batch_size,
        "sampling": "poisson",
        "sampling_probability": q,
        "delta": args.delta,
        "adjacency": accounting.ADJACENCY,
        "dp_accounting_version": accounting.dp_accounting_version(),
    }
    out["warnings"] = messages = []
    with warnings.catch_warnings(record=True) as caught, _absl_warnings_into(messages):
        warnings.simplefilter("always")
        accounting.check_delta_for_dataset(args.delta, args.dataset_size)
        _answer(accounting, args, q, out)
    messages[:0] = [str(w.message) for w in caught]
    return out


def _slow(what):
    return cli.announce_after(2.0, f"dp_zoo.privacy: {what} (dp-accounting; this can take a minute)...")


def _answer(accounting, args, q, out):
    """Fills ``out`` with the calibrated sigma or steps and the epsilons."""
    if args.target_epsilon is not None:
        out["target_epsilon"] = args.target_epsilon
        out["accountant"] = args.accountant
        if args.noise_multiplier is None:
            with _slow(f"calibrating sigma for epsilon <= {args.target_epsilon:g} over {args.steps} steps "
                       f"({args.accountant.upper()})"):
                sigma = accounting.calibrate_noise(
                    target_epsilon=args.target_epsilon, sampling_probability=q,
                    steps=args.steps, delta=args.delta, accountant=args.accountant,
                )
            out.update(mode="calibrate_noise", steps=args.steps, noise_multiplier=sigma)
        else:
            with _slow(f"calibrating the steps for epsilon <= {args.target_epsilon:g} at sigma="
                       f"{args.noise_multiplier:g} ({args.accountant.upper()})"):
                steps = accounting.calibrate_steps(
                    target_epsilon=args.target_epsilon, noise_multiplier=args.noise_multiplier,
                    sampling_probability=q, delta=args.delta, accountant=args.accountant,
                )
            out.update(mode="calibrate_steps", steps=steps, noise_multiplier=args.noise_multiplier)
        if out["steps"] == 0:
            out["epsilon_rdp"] = out["epsilon_pld"] = None
            return
        sigma, steps = out["noise_multiplier"], out["steps"]
    else:
        sigma, steps = args.noise_multiplier, args.steps
        out.update(mode="epsilon", steps=steps, noise_multiplier=sigma)
    for acc in accounting.ACCOUNTANTS:
        if acc == "pld" and steps > PLD_MAX_STEPS:
            out["epsilon_pld"] = None
            out["warnings"].append(f"PLD epsilon not computed: {steps:,} steps is more than the PLD accountant "
                                   f"composes in reasonable time ({PLD_MAX_STEPS:,}); the RDP epsilon is an upper "
                                   "bound.")
            continue
        with _slow(f"computing epsilon over {steps:,} steps ({acc.upper()})"):
            out[f"epsilon_{acc}"] = accounting.epsilon(
                noise_multiplier=sigma, sampling_probability=q, steps=steps,
                delta=args.delta, accountant=acc,
            )


def _human(out):
    lines = [
        f"DP-SGD, Poisson sampling: N={out['dataset_size']}, expected batch "
        f"B={out['batch_size']:g} (q={out['sampling_probability']:.6g}), delta={out['delta']:g}, "
        f"add-or-remove-one adjacency (dp-accounting {out['dp_accounting_version']})",
    ]
    if out["mode"] == "calibrate_noise":
        lines.append(
            f"sigma for epsilon <= {out['target_epsilon']:g} at {out['steps']} steps "
            f"({out['accountant'].upper()}): {out['noise_multiplier']:.4f}"
        )
    elif out["mode"] == "calibrate_steps":
        lines.append(
            f"steps for epsilon <= {out['target_epsilon']:g} at sigma={out['noise_multiplier']:g} "
            f"({out['accountant'].upper()}): {out['steps']}"
        )
        if out["steps"] == 0:
            lines.append("even one step exceeds the budget: use more noise or a smaller batch.")
    else:
        lines.append(f"sigma={out['noise_multiplier']:g}, steps={out['steps']}")
    if out.get("epsilon_rdp") is not None:
        lines.append(f"epsilon (RDP): {out['epsilon_rdp']:.4f}")
    if out.get("epsilon_pld") is not None:
        lines.append(f"epsilon (PLD): {out['epsilon_pld']:.4f}   (tighter)")
    for w in out["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def main(argv=None):
    """Runs the CLI; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        out = compute(args)
    except ValueError as e:
        print(f"dp_zoo.privacy: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else _human(out))
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
