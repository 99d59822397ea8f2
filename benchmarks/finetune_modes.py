"""Steps/s of the fine-tuning modes: full fine-tuning, --trainable head, --linear-probe (#19).

    python benchmarks/finetune_modes.py [--model nf_resnet50] [--size 32] [--batch 16] [--n 256]
                                        [--rounds 3] [--out benchmarks/results/finetune_modes.json]

Each mode is an engine ``Trainer`` on the same synthetic data set (N random
uint8 images, 10 classes), the same configuration (expected batch = physical
batch = ``--batch``, K=1, sigma=1) and the same reproducible sampling, so
step t samples the same examples in every mode. After one warm-up step
(tracing excluded), the modes' logical steps are timed in turn, round by
round; the table gives the median seconds per step and steps/s. Linear
probing's one-off feature extraction (the backbone over the N training
images, inference mode) is timed separately: it is paid once per run (and
not at all on a resume, which reads the cache).
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np

import dp_zoo
from dp_zoo.data import Dataset
from dp_zoo.engine import trainer as engine, linear_probe
from dp_zoo.recipes import config as C


def _config(args, **kw):
    return C.TrainConfig(model=args.model, batch_size=args.batch, physical_batch_size=args.batch, steps=10_000,
                         seed=0, deterministic=True, checkpoint_every=10_000,
                         dp=C.DPConfig(noise_multiplier=1.0, l2_clip=1.0), ema=C.EMAConfig(decay=None),
                         optim=C.OptimConfig(learning_rate=0.1), **kw)


def _trainers(args, train):
    """``({mode: Trainer}, feature extraction seconds)``."""
    shape = train.input_shape

    def model():
        keras.utils.set_random_seed(0)
        return dp_zoo.create_model(args.model, num_classes=10, input_shape=shape)

    out = {"full fine-tune (all)": engine.Trainer(model(), _config(args), train, progress=False),
           "--trainable head": engine.Trainer(model(), _config(args, trainable="head"), train, progress=False)}
    probe_cfg = _config(args, trainable="head", linear_probe=True)
    full = model()
    from dp_zoo.engine import trainable

    trainable.apply(full, "head")
    t0 = time.perf_counter()
    feats = linear_probe.extract(linear_probe.backbone(full), train, mean=train.mean, std=train.std)
    extract_s = time.perf_counter() - t0
    out["--linear-probe"] = engine.Trainer(linear_probe.head_model(full), probe_cfg,
                                           linear_probe.FeatureSet(feats, train), progress=False)
    return out, extract_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nf_resnet50")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/finetune_modes.json")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    train = Dataset(rng.integers(0, 256, (args.n, args.size, args.size, 3), dtype=np.uint8),
                    rng.integers(0, 10, args.n), 10, "synthetic", "train", (0.5,) * 3, (0.25,) * 3)
    trainers, extract_s = _trainers(args, train)
    times = {mode: [] for mode in trainers}
    for mode, t in trainers.items():
        t.train_step(0)  # warm-up: tracing and compilation
    for r in range(1, args.rounds + 1):
        for mode, t in trainers.items():
            t0 = time.perf_counter()
            t.train_step(r)
            times[mode].append(time.perf_counter() - t0)
    rows = []
    for mode, t in trainers.items():
        med = float(np.median(times[mode]))
        rows.append({"mode": mode, "trained_params": t.trained["params"], "s_per_step": med,
                     "steps_per_s": 1.0 / med})
    full = rows[0]["s_per_step"]
    print(f"{args.model} at {args.size}px, expected batch {args.batch}, N={args.n}, K=1, {args.rounds} rounds "
          f"(median); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'mode':24s} {'trained params':>15s} {'s/step':>9s} {'steps/s':>9s} {'vs full':>8s}")
    for r in rows:
        print(f"{r['mode']:24s} {r['trained_params']:15d} {r['s_per_step']:9.3f} {r['steps_per_s']:9.2f} "
              f"{full / r['s_per_step']:7.1f}x")
    print(f"linear probe feature extraction (once, {args.n} images): {extract_s:.2f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows, "feature_extraction_s": extract_s,
                   "platform": platform.platform(), "cpu_count": os.cpu_count(),
                   "date": time.strftime("%Y-%m-%d", time.gmtime())}, f, indent=2)


if __name__ == "__main__":
    main()
