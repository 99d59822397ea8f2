"""Cost per step of a TAN simulation of a paper recipe, on this machine.

    python benchmarks/tan_cost.py [--recipe wrn16_4_cifar10_eps8] [--factor 64] [--steps 3]

Runs the real engine on the recipe's TAN-simulated configuration (batch and
sigma divided by --factor, K, model and steps per the recipe) for a few steps
on data of CIFAR-10's shape and size from ``tfds.testing.mock_data`` (random
pixels: the cost per step does not depend on them), and prints the measured
seconds per step and the projected time of the full simulated run. Writes
benchmarks/results/tan_cost.json.
"""

import argparse
import json
import os
import time

import keras

import dp_zoo
from dp_zoo import data
from dp_zoo.engine import tan
from dp_zoo.engine import trainer as engine
from dp_zoo.recipes import recipes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="wrn16_4_cifar10_eps8")
    ap.add_argument("--factor", type=float, default=64)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    import tensorflow_datasets as tfds

    r = recipes.get(a.recipe)
    sim = tan.simulate(r.config, a.factor, dataset_size=r.dataset_size)
    with tfds.testing.mock_data(num_examples=r.dataset_size):
        train = data.load_dataset(sim.data, "train")
    cfg = sim.replace(steps=a.steps + 1, eval_every=0)
    keras.utils.set_random_seed(0)
    model = dp_zoo.create_model(cfg.model, num_classes=train.num_classes, input_shape=train.input_shape,
                                **dict(cfg.model_kwargs))
    t = engine.Trainer(model, cfg, train, augment_fn=data.make_augment_fn(cfg.augmult), progress=False)
    t0 = time.time()
    t.train_step(0)  # includes tracing
    first = time.time() - t0
    t0 = time.time()
    for s in range(1, a.steps + 1):
        t.train_step(s)
    per_step = (time.time() - t0) / a.steps
    row = {"recipe": a.recipe, "factor": a.factor, "batch_size": sim.batch_size,
           "noise_multiplier": sim.dp.noise_multiplier, "augmult": sim.augmult.num_views,
           "first_step_s": first, "seconds_per_step": per_step, "recipe_steps": r.config.steps,
           "projected_hours": per_step * r.config.steps / 3600, "cpu_count": os.cpu_count()}
    print(f"{a.recipe} TAN x{a.factor:g}: batch {sim.batch_size}, sigma {sim.dp.noise_multiplier:.4f}, "
          f"K={sim.augmult.num_views}: first step {first:.1f} s, then {per_step:.2f} s/step; "
          f"{r.config.steps} steps ~ {row['projected_hours']:.2f} h on {os.cpu_count()} CPU cores")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/tan_cost.json", "w") as f:
        json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
