"""Augmult input pipeline throughput vs the DP step's consumption, same run.

    python benchmarks/input_pipeline.py [--augmult 16] [--batch 64]

Times the engine's per-micro-batch input work (gather uint8 rows, normalize,
K augmented CIFAR-style views at 32x32) against one DP step of wrn_test on
the same batch, and prints whether the pipeline keeps up. Writes
benchmarks/results/input_pipeline.json.
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

import dp_zoo
from dp_zoo import preprocessing
from dp_zoo.train import data, dp_sgd
from dp_zoo.train.config import AugmultConfig


def timeit(fn, repeats=5):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        tf.nest.map_structure(lambda t: t.numpy(), r)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--augmult", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--model", default="wrn_test")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5000)
    aug = data.make_augment_fn(AugmultConfig(num_views=a.augmult, style="cifar", pad=4))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    pipe = tf.function(lambda x, s: aug(preprocessing.normalize(x, mean, std), s))
    model = dp_zoo.create_model(a.model, num_classes=10, input_shape=(32, 32, 3))
    step = tf.function(lambda x, y: dp_sgd.clipped_grad_sum(model, x, y, l2_clip=1.0)[0])

    def input_work():
        idx = rng.choice(5000, a.batch, replace=False)
        return pipe(tf.constant(images[idx]), tf.constant([1, 2], tf.int64))

    views = input_work()
    y = tf.constant(labels[: a.batch], tf.int32)
    t_in = timeit(input_work)
    t_step = timeit(lambda: step(views, y))
    row = {"augmult": a.augmult, "batch": a.batch, "model": a.model,
           "pipeline_images_per_s": a.batch * a.augmult / t_in,
           "pipeline_examples_per_s": a.batch / t_in,
           "dp_step_examples_per_s": a.batch / t_step,
           "pipeline_share_of_step": t_in / (t_in + t_step)}
    print(f"{'K':>3s} {'batch':>5s} {'pipeline img/s':>14s} {'pipeline ex/s':>13s} {'DP step ex/s':>12s} {'input share':>11s}")
    print(f"{a.augmult:3d} {a.batch:5d} {row['pipeline_images_per_s']:14.0f} {row['pipeline_examples_per_s']:13.0f} "
          f"{row['dp_step_examples_per_s']:12.1f} {row['pipeline_share_of_step']:10.1%}")
    print("keeps up" if row["pipeline_examples_per_s"] > row["dp_step_examples_per_s"] else "INPUT-BOUND")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/input_pipeline.json", "w") as f:
        json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
