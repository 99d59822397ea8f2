"""dp_zoo's accountant ε for every private recipe, beside the ε its source states.

For each private recipe: RDP and PLD ε (``dp_zoo.accounting``, Poisson
sampling, q = B / N with N the split dp_zoo trains on) for the recipe's own
sigma, steps and delta. For a publication's configuration also the ε the
source states, for the source's N, and what RDP (the accountant De et al.
and TAN used) gives at that N; where the two disagree by more than
``TOLERANCE``, or dp_zoo's N is not the source's, ``note`` says so. sigma is
never recalibrated to hide a difference.

The table is computed by this module and checked in as
``epsilons.json`` so that listing the zoo never runs an accountant::

    python -m dp_zoo.recipes.epsilons        # rewrites the JSON

``tests/train/test_recipes.py`` recomputes every row (slow-marked) and checks
quickly that the JSON's inputs are the recipes' current ones.
"""

import json
import pathlib
import sys

TABLE_PATH = pathlib.Path(__file__).with_name("epsilons.json")
# Relative gap between dp_zoo's RDP ε (at the source's N and δ) and the source's stated ε
# under which they are reported as the same figure (rounding of σ in the source).
TOLERANCE = 0.01


def inputs(recipe, dataset_size=None):
    """The accountant's inputs for ``recipe`` (at ``dataset_size``, default the recipe's N)."""
    c = recipe.config
    n = dataset_size or recipe.dataset_size
    return {"noise_multiplier": c.dp.noise_multiplier, "sampling_probability": c.batch_size / n,
            "steps": c.steps, "delta": c.dp.delta}


def _epsilon(accountant, recipe, dataset_size=None):
    from dp_zoo import accounting

    return accounting.epsilon(**inputs(recipe, dataset_size), accountant=accountant)


def note(recipe, row):
    """Why the accountant's ε differs from the target or the source's stated ε ("" when it does not)."""
    parts = []
    stated = row.get("stated_epsilon")
    if stated is not None:
        at = row["rdp_at_stated_dataset_size"]
        if abs(at - stated) > TOLERANCE * stated:
            rel = ("below it, so the stated eps holds with room to spare" if at < stated
                   else "ABOVE it: the stated eps does not hold")
            parts.append(f"the source states eps={stated:g} (N={row['stated_dataset_size']:,}, "
                         f"delta={recipe.config.dp.delta:g}); dp_zoo's RDP accountant gives {at:.3f} for the "
                         f"same sigma, q, steps and delta, {rel}")
        if row["stated_dataset_size"] != row["dataset_size"]:
            parts.append(f"the source's eps is for N={row['stated_dataset_size']:,} (RDP {at:.4f} there); "
                         f"dp_zoo trains on N={row['dataset_size']:,}")
    target, accountant = recipe.config.dp.target_epsilon, recipe.config.dp.accountant
    if target is not None and row[accountant] > target:
        parts.append(f"{accountant.upper()} eps {row[accountant]:.4f} exceeds the target {target:g}: the budget "
                     "guard stops the run before its last steps")
    return "; ".join(parts)


def compute(recipe):
    """One row: inputs, ``rdp``, ``pld`` and, for a publication's configuration, the stated ε."""
    row = {**inputs(recipe), "dataset_size": recipe.dataset_size,
           "rdp": _epsilon("rdp", recipe), "pld": _epsilon("pld", recipe)}
    p = recipe.published
    if p is not None:
        row["stated_epsilon"] = p.epsilon
        row["stated_dataset_size"] = p.dataset_size
        row["rdp_at_stated_dataset_size"] = _epsilon("rdp", recipe, p.dataset_size)
    row["note"] = note(recipe, row)
    return row


def private_recipes():
    from dp_zoo.recipes import recipes

    return {n: r for n, r in sorted(recipes.RECIPES.items()) if r.config.dp.enabled}


def compute_all():
    """``{recipe name: row}`` for every private recipe (a few seconds: one PLD each)."""
    return {name: compute(r) for name, r in private_recipes().items()}


def load():
    """The checked-in table (no accountant runs)."""
    with open(TABLE_PATH) as f:
        return json.load(f)["recipes"]


def write(table=None, path=TABLE_PATH):
    table = compute_all() if table is None else table
    from dp_zoo import accounting

    doc = {"generated_by": "python -m dp_zoo.recipes.epsilons",
           "dp_accounting": accounting.dp_accounting_version(), "recipes": table}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    return table


def main():
    table = write()
    for name, row in table.items():
        print(f"{name:40s} rdp {row['rdp']:8.4f}  pld {row['pld']:8.4f}  {row['note']}")
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
