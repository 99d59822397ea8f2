"""The zoo's privacy-utility table and plot, regenerated from the model cards.

    python benchmarks/privacy_utility.py [--dataset digits]

Reads card.json of every published entry of the data set (the same search
path as ``dp_zoo.load``), prints a Markdown table (epsilon from each card's
accountant, test accuracy measured on the held-out test split), draws
accuracy vs epsilon with the non-private baseline as a line, and writes
benchmarks/results/privacy_utility_<dataset>.{json,png}.

Where benchmarks/results/privacy_utility_<dataset>_uncovered.json exists (the
rows of the models published before their hyper-parameter search was covered:
their epsilon is one run's, the search on their training data is not counted),
the plot shows them beside the current cards, labelled as such. A card whose
privacy.tuning is set (``python -m dp_zoo.tune``) states the total epsilon,
search included.
"""

import argparse
import json
import os

from dp_zoo.cards.markdown import fmt_eps
from dp_zoo.publish import listing, zoo


def collect(dataset):
    rows = []
    for r in listing.list_models():
        if r["dataset"] != dataset or not r["available"]:
            continue
        c = zoo.card(r["name"])
        p, m = c["privacy"], c.get("metrics") or {}
        rows.append({
            "name": r["name"], "private": p["private"], "epsilon": p["epsilon"],
            "epsilon_pld": p.get("epsilon_pld"), "epsilon_rdp": p.get("epsilon_rdp"),
            "delta": p["delta"] if p["private"] else None, "steps": p["steps"],
            "noise_multiplier": p["noise_multiplier"] if p["private"] else None,
            "test_accuracy_ema": m.get("test_accuracy_ema"), "test_accuracy_last": m.get("test_accuracy_last"),
            "tuned": bool(p.get("tuning")),
            # No number of trials: it is secret (docs/privacy.md, "Hyper-parameter tuning").
            "expected_trials": ((p.get("tuning") or {}).get("trial_distribution") or {}).get("expected_trials"),
            "per_trial_epsilon": (p.get("tuning") or {}).get("per_trial_epsilon"),
        })
    return sorted(rows, key=lambda r: (r["epsilon"] is None, r["epsilon"] or 0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    a = ap.parse_args()
    rows = collect(a.dataset)
    if not rows:
        raise SystemExit(f"No published {a.dataset} models found; train them first (see README 'Model zoo').")
    print("| entry | ε (accountant) | δ | σ | steps | test acc. (EMA) | test acc. (last) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        # Rounded up, as on the cards: a table must never state less than the accountant computed.
        eps = fmt_eps(r["epsilon"]) if r["epsilon"] is not None else "∞ (not private)"
        sig = f"{r['noise_multiplier']:.4f}" if r["noise_multiplier"] else "—"
        delta = f"{r['delta']:g}" if r["delta"] else "—"
        ema = f"{r['test_accuracy_ema']:.4f}" if r["test_accuracy_ema"] is not None else "—"
        print(f"| `{r['name']}` | {eps} | {delta} | {sig} | {r['steps']} | {ema} | {r['test_accuracy_last']:.4f} |")
    os.makedirs("benchmarks/results", exist_ok=True)
    base = f"benchmarks/results/privacy_utility_{a.dataset}"
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = lambda r: r["test_accuracy_ema"] if r["test_accuracy_ema"] is not None else r["test_accuracy_last"]
    pts = [(r["epsilon"], acc(r)) for r in rows if r["private"]]
    tuned = any(r.get("tuned") for r in rows if r["private"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if pts:
        ax.plot(*zip(*pts), marker="o", label="tuned privately: ε covers the search" if tuned
                else "DP-SGD (ε from the accountant)")
    uncovered = f"benchmarks/results/privacy_utility_{a.dataset}_uncovered.json"
    if tuned and os.path.exists(uncovered):
        with open(uncovered) as f:
            old = [(r["epsilon"], acc(r)) for r in json.load(f) if r["private"]]
        ax.plot(*zip(*old), marker="s", ls=":", color="tab:red",
                label="earlier: search on training data NOT in ε")
    for r in rows:
        if not r["private"]:
            ax.axhline(acc(r), color="gray", ls="--", label="non-private baseline")
    ax.set_xlabel("ε (δ = 1e-5)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"dp_zoo privacy-utility, {a.dataset}")
    ax.legend()
    fig.savefig(base + ".png", dpi=100, bbox_inches="tight")
    print(f"wrote {base}.json and {base}.png")


if __name__ == "__main__":
    main()
