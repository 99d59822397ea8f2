"""A NON-PRIVATE hyper-parameter search on the digits data: a benchmark, never a way to choose
a published model.

Each configuration trains on digits[:1137] and is scored by its exact accuracy
on digits[1137:1437] (validation_size=300), which is training data: the
search looks at the private data without any privacy accounting, and no
card's epsilon covers it. (It never looks at the test split.)

Its status (issue #26): the untuned recipes ``wrn_digits_eps*`` took their
learning rate and step count from it, and their cards say that a search on
the data is NOT covered. A tuned model (``python -m dp_zoo.tune``) must not
take its base configuration or grid from it: the published digits models
are tuned with ``--space digits_public`` (dp_zoo/recipes/search_spaces.py),
whose every value comes from public sources. Kept as a documented,
non-private benchmark of what a search on the data finds.

    python benchmarks/digits_search.py [--quick]

Prints a table and writes benchmarks/results/digits_search.json.
"""

import argparse
import itertools
import json
import os
import time

import keras

import dp_zoo
from dp_zoo import data
from dp_zoo.engine import trainer as engine
from dp_zoo.recipes import config as C
from dp_zoo.recipes import recipes


def run(eps, lr, steps, k, seed=0):
    base = recipes.get(f"wrn_digits_eps{eps}").config
    dc = C.DataConfig(dataset="digits", validation_size=300)
    cfg = base.replace(
        steps=steps, data=dc, augmult=C.AugmultConfig(num_views=k, style="crop", pad=1, augment_first_view=False),
        optim=C.OptimConfig(learning_rate=lr),
        dp=C.DPConfig(target_epsilon=float(eps), delta=1e-5, accountant="pld"), seed=seed,
    )
    train = data.load_dataset(dc, "train")
    val = data.load_dataset(dc, "validation")
    keras.utils.set_random_seed(seed)
    model = dp_zoo.create_model(cfg.model, num_classes=10)
    t = engine.Trainer(model, cfg, train, augment_fn=data.make_augment_fn(cfg.augmult), progress=False)
    t0 = time.time()
    rec = t.fit()
    return {
        "epsilon_target": eps, "lr": lr, "steps": steps, "augmult": k,
        "sigma": t.noise_multiplier, "epsilon": rec["privacy"]["epsilon"],
        "val_accuracy_ema": t.evaluate(val, "ema")["accuracy"],
        "val_accuracy_last": t.evaluate(val, "last")["accuracy"],
        "seconds": round(time.time() - t0, 1),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--eps", type=float, nargs="+", default=[2, 8])
    a = p.parse_args()
    grid = list(itertools.product([1.0, 2.0], [60, 120], [4]))
    if a.quick:
        grid = grid[:2]
    rows = []
    for eps in a.eps:
        for lr, steps, k in grid:
            r = run(int(eps), lr, steps, k)
            rows.append(r)
            print(f"eps={r['epsilon_target']:>3} lr={lr:<4} steps={steps:<4} K={k} sigma={r['sigma']:.3f} "
                  f"val_acc_ema={r['val_accuracy_ema']:.4f} val_acc_last={r['val_accuracy_last']:.4f} "
                  f"({r['seconds']} s)", flush=True)
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/digits_search.json", "w") as f:
        json.dump({"validation": "digits[1137:1437]", "train": "digits[:1137]", "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
