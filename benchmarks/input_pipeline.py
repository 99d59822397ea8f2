"""Augmult input pipeline throughput vs the DP step's consumption, same run.

    python benchmarks/input_pipeline.py [--augmult 16] [--models wrn_test:64,wrn16_4:8]

For each ``model:batch``, times the engine's per-micro-batch input work
(gather the sampled uint8 rows, normalize, K augmented CIFAR-style views at
32x32: what ``Trainer`` runs in-graph on each Poisson-sampled micro-batch)
against one DP step (per-example clipped gradient sum over the K views) of
that model on the same batch, and prints whether the pipeline keeps up.
``wrn16_4`` is the model the K=16 CIFAR-10 recipes train; the tiny
``wrn_test`` is the hardest case for the pipeline (the cheapest step). The
batch is per model so that a WRN-16-4 step stays seconds on a laptop CPU;
rates are per example, so they compare across batches. Writes
benchmarks/results/input_pipeline.json.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf

import dp_zoo
from dp_zoo import data
from dp_zoo import dp, preprocessing
from dp_zoo.recipes.config import AugmultConfig


def timeit(fn, repeats):
    tf.nest.map_structure(lambda t: t.numpy(), fn())  # trace + warm-up, not timed
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--augmult", type=int, default=16)
    p.add_argument("--models", default="wrn_test:64,wrn16_4:8", help="comma-separated model:batch")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    # CIFAR-10-sized train split held in memory, as load_dataset holds it.
    images = rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50_000)
    aug = data.make_augment_fn(AugmultConfig(num_views=a.augmult, style="cifar", pad=4))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    pipe = tf.function(lambda x, s: aug(preprocessing.normalize(x, mean, std), s))
    rows = []
    for spec in a.models.split(","):
        name, batch = spec.split(":")
        batch = int(batch)
        model = dp_zoo.create_model(name, num_classes=10, input_shape=(32, 32, 3))
        step = tf.function(lambda x, y, m=model: dp.clipped_grad_sum(m, x, y, l2_clip=1.0)[0])

        def input_work():
            idx = np.sort(rng.choice(len(images), batch, replace=False))
            return pipe(tf.constant(images[idx]), tf.constant(rng.integers(0, 2**31, 2), tf.int64))

        views = input_work()
        y = tf.constant(labels[:batch], tf.int32)
        t_in = timeit(input_work, a.repeats)
        t_step = timeit(lambda: step(views, y), a.repeats)
        rows.append({"model": name, "batch": batch,
                     "pipeline_images_per_s": batch * a.augmult / t_in,
                     "pipeline_examples_per_s": batch / t_in,
                     "dp_step_examples_per_s": batch / t_step,
                     "pipeline_share_of_step": t_in / (t_in + t_step)})
    print(f"K={a.augmult}, 32x32x3, CPU threads: {os.cpu_count()}")
    print(f"{'model':10s} {'batch':>5s} {'pipeline img/s':>14s} {'pipeline ex/s':>13s} {'DP step ex/s':>12s} "
          f"{'input share':>11s}")
    for r in rows:
        verdict = "keeps up" if r["pipeline_examples_per_s"] > r["dp_step_examples_per_s"] else "INPUT-BOUND"
        print(f"{r['model']:10s} {r['batch']:5d} {r['pipeline_images_per_s']:14.0f} "
              f"{r['pipeline_examples_per_s']:13.0f} {r['dp_step_examples_per_s']:12.1f} "
              f"{r['pipeline_share_of_step']:10.1%}  {verdict}")
    os.makedirs("benchmarks/results", exist_ok=True)
    out = {"augmult": a.augmult, "image_shape": [32, 32, 3], "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "rows": rows}
    with open("benchmarks/results/input_pipeline.json", "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
