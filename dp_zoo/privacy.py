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

import json
import sys
import warnings

from dp_zoo import accounting, cli


def _parser():
    p = cli.Parser("dp_zoo.privacy",
                   description="Privacy accounting for DP-SGD with Poisson sampling (dp-accounting).")
    p.option("dataset-size", type=int, required=True, help="N, examples in the training set")
    p.option("batch-size", type=float, required=True, help="expected batch size B (q = B/N)")
    p.option("steps", type=int, help="number of noisy steps")
    p.option("noise-multiplier", type=float, help="sigma")
    p.option("delta", type=float, required=True)
    p.option("target-epsilon", type=float, help="calibrate sigma (or steps, if sigma is given)")
    p.option("accountant", choices=accounting.ACCOUNTANTS, default="pld",
             help="accountant used for calibration (default pld)")
    p.switch("json", default=False, help="print JSON")
    return p


def compute(args):
    """Computes the answer dict for parsed ``args`` (raises ValueError on bad input)."""
    if args.dataset_size < 1:
        raise ValueError("--dataset-size must be >= 1.")
    if not 0 < args.batch_size <= args.dataset_size:
        raise ValueError(
            f"--batch-size must be in (0, dataset size {args.dataset_size}], got {args.batch_size:g}."
        )
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accounting.check_delta_for_dataset(args.delta, args.dataset_size)
    out["warnings"] = [str(w.message) for w in caught]

    if args.target_epsilon is not None:
        out["target_epsilon"] = args.target_epsilon
        out["accountant"] = args.accountant
        if args.noise_multiplier is None:
            if args.steps is None:
                raise ValueError("with --target-epsilon, pass --steps (to calibrate sigma) or --noise-multiplier (to calibrate steps).")
            sigma = accounting.calibrate_noise(
                target_epsilon=args.target_epsilon, sampling_probability=q,
                steps=args.steps, delta=args.delta, accountant=args.accountant,
            )
            out.update(mode="calibrate_noise", steps=args.steps, noise_multiplier=sigma)
        else:
            if args.steps is not None:
                raise ValueError("with --target-epsilon, pass only one of --steps and --noise-multiplier: the other is calibrated.")
            steps = accounting.calibrate_steps(
                target_epsilon=args.target_epsilon, noise_multiplier=args.noise_multiplier,
                sampling_probability=q, delta=args.delta, accountant=args.accountant,
            )
            out.update(mode="calibrate_steps", steps=steps, noise_multiplier=args.noise_multiplier)
        if out["steps"] == 0:
            out["epsilon_rdp"] = out["epsilon_pld"] = None
            return out
        sigma, steps = out["noise_multiplier"], out["steps"]
    else:
        if args.steps is None or args.noise_multiplier is None:
            raise ValueError("pass --steps and --noise-multiplier (or --target-epsilon to calibrate one of them).")
        sigma, steps = args.noise_multiplier, args.steps
        out.update(mode="epsilon", steps=steps, noise_multiplier=sigma)
    for acc in accounting.ACCOUNTANTS:
        out[f"epsilon_{acc}"] = accounting.epsilon(
            noise_multiplier=sigma, sampling_probability=q, steps=steps,
            delta=args.delta, accountant=acc,
        )
    return out


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
