"""``python -m dp_zoo.zoo`` (and ``dp-zoo-zoo``): print the zoo's table, or register an artifact.

``python -m dp_zoo.zoo [list]`` prints ``list_models()`` as a table with the
ε notes under it; ``python -m dp_zoo.zoo register ENTRY DIR [--remote URL
--archive-sha256 SHA]`` writes an artifact's MANIFEST.json SHA-256 into the
zoo table (``dp_zoo.publish.zoo.register``). No TensorFlow is imported.
"""

import functools
import os
import sys

from dp_zoo import cli
from dp_zoo.publish import listing, zoo
from dp_zoo.recipes import recipes


def _eps_text(x, decimals=3):
    """An epsilon for the table, rounded *up* (a rounded-down epsilon would claim more than was computed)."""
    import math

    return "-" if x is None else f"{math.ceil(x * 10**decimals - 1e-9) / 10**decimals:.{decimals}f}"


def format_models(rows=None):
    """The ``listing.list_models()`` table as text, with the ε notes under it.

    An available model's row shows its own card's epsilon (RDP / PLD as the
    card records them); other rows show dp_zoo's accountant for the recipe.
    Every epsilon is rounded up.
    """
    from dp_zoo.cards.markdown import fmt_eps

    rows = listing.list_models() if rows is None else rows
    head = (f"{'name':36s} {'dataset':12s} {'config':7s} {'eps':>5s} {'RDP/PLD':>14s} {'acc (ours)':>10s} "
            f"{'acc (paper)':>11s}  status")
    lines = [head, "-" * len(head)]
    notes = []
    for r in rows:
        eps = r["epsilon"] if r["epsilon"] is not None else r["target_epsilon"]
        eps_s = "-" if eps is None else fmt_eps(eps)
        if r["available"]:
            rdp, pld, note = r["card_epsilon_rdp"], r["card_epsilon_pld"], None
            if r["card_tuned"]:
                note = ("the card's epsilon is the total over the private hyper-parameter search that chose the "
                        "model (RDP, Papernot & Steinke 2022; no PLD for it)")
        else:
            rdp, pld, note = r["epsilon_rdp"], r["epsilon_pld"], r["epsilon_note"]
        acct = "-" if rdp is None and pld is None else f"{_eps_text(rdp)}/{_eps_text(pld)}"
        if note:
            notes.append(f"  [{len(notes) + 1}] {r['name']}: {note}")
            acct += f"[{len(notes)}]"
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        pub = "-" if r["published_accuracy"] is None else f"{r['published_accuracy']:.1f}%"
        lines.append(f"{r['name']:36s} {r['dataset']:12s} {r['config_label']:7s} {eps_s:>5s} "
                     f"{acct:>14s} {acc:>10s} {pub:>11s}  {r['status']}")
    legend = ("config: whose configuration it is (De2022: De et al. 2022; TAN2023: Sander et al. 2023; De2022~: almost "
              "certainly De et al. 2022's, inferred, unverified; De2022s: De et al. 2022's sigma as remembered, "
              "unverified, steps computed by dp_zoo; own: dp_zoo's own choice, no paper figure). eps: the card's, "
              "else the target; RDP/PLD: an available model's own card, else dp_zoo's accountant for the recipe; "
              "every epsilon rounded up.")
    return "\n".join(lines + ["", legend] + notes)


def main(argv=None):
    """``python -m dp_zoo.zoo [list]`` prints the table; ``register ENTRY DIR`` records an artifact.

    Returns:
      the exit status (a bad command line exits with 2, as argparse does).
    """
    parser = cli.Parser("dp_zoo.zoo", description="The dp_zoo model zoo.")
    commands = parser.add_subparsers(dest="command", parser_class=functools.partial(cli.Parser, "dp_zoo.zoo"))
    commands.add_parser("list", help="print the zoo's entries (the default)")
    reg = commands.add_parser("register", help="write an artifact's MANIFEST.json SHA-256 into the zoo table")
    reg.add_argument("entry", help="the zoo entry (a recipe name)")
    reg.add_argument("artifact_dir", help="the exported artifact, e.g. saved_models/<entry>")
    reg.option("remote", help="where the artifact is hosted: an https/file URL of a .tar.gz, or kaggle:<handle>")
    reg.option("archive-sha256", help="the SHA-256 of the .tar.gz at --remote")
    args = parser.parse_args(argv)
    if args.command != "register":
        print(format_models())
        return 0
    # What the command line names must exist (exit 2, as argparse's errors); a bad artifact is exit 1.
    if args.entry not in recipes.RECIPES:
        unknown = cli.unknown_name_message("zoo entry", args.entry, sorted(recipes.RECIPES))
        reg.error(f"ENTRY: {unknown} A zoo entry is a recipe; add one to dp_zoo/recipes/recipes.py first")
    if not os.path.isdir(args.artifact_dir):
        reg.error(f"ARTIFACT_DIR {args.artifact_dir}: no such directory")
    try:
        digest = zoo.register(args.entry, args.artifact_dir, remote=args.remote, archive_sha256=args.archive_sha256)
    except (ValueError, OSError) as e:
        print(f"dp_zoo.zoo: error: {e}", file=sys.stderr)
        return 1
    print(f"registered: {args.entry} -> {digest} in {zoo.TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
