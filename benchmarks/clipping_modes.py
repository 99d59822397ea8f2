"""Clipping modes (issue #31): the DP step's speed under each, and the digits recipes' accuracy under each.

    python benchmarks/clipping_modes.py [--model wrn16_4] [--batch 64] [--repeats 7]
                                        [--accuracy] [--eps 1 8] [--out benchmarks/results/clipping_modes.json]

Speed: ``clipped_grad_sum`` under flat, automatic and per-layer clipping,
adaptive clipping's (flat at a C read from a variable, plus the count query
``adaptive_clip.centred_count``) and the non-private gradient of the same
model and batch (32x32x3, K=1), each traced once, then timed in turn in every
round (wall-clock medians); the table gives each mode's time over flat's,
measured in the same rounds.

Accuracy (``--accuracy``): ``python -m dp_zoo.train --recipe wrn_digits_eps<E>
--clipping MODE --no-publish`` for each epsilon and mode, one process each, in
a temporary run directory; the row holds the test accuracy of the published
(EMA) weights and the epsilon from the run record. The digits are public
data: timing these runs publishes nothing private, but only the whole
process's time is given (the step's is the speed table's).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

MODES = ("flat", "automatic", "per_layer", "adaptive")


def speed(model_name, batch, repeats):
    """Median seconds per call of the non-private step and of the DP step under each mode."""
    import numpy as np
    import tensorflow as tf

    import dp_zoo
    from dp_zoo import dp
    from dp_zoo.dp import adaptive_clip

    model = dp_zoo.create_model(model_name, num_classes=10, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 1, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, batch).astype("int32"))
    fns = {"non-private": tf.function(lambda: dp.mean_grad(model, x, y)[0])}
    for mode in MODES[:3]:
        rule = None if mode == "flat" else dp.Clipping(mode, l2_clip=1.0)
        fns[mode] = tf.function(lambda rule=rule: dp.clipped_grad_sum(model, x, y, l2_clip=1.0, clipping=rule)[0])
    clip = tf.Variable(1.0)

    @tf.function
    def adaptive():
        c = clip.read_value()
        grads, norms = dp.clipped_grad_sum(model, x, y, l2_clip=c)
        return list(grads) + [adaptive_clip.centred_count(norms, c, tf.ones_like(norms))]

    fns["adaptive"] = adaptive
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        [t.numpy() for t in fn()]
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            [t.numpy() for t in fn()]
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": float(np.median(ts)), "first_call_s": first[name],
                   "over_flat": [a / b for a, b in zip(ts, times["flat"])]} for name, ts in times.items()}


def accuracy(eps, mode):
    """Test accuracy and epsilon of the digits recipe at ``eps`` trained under ``mode`` (one process)."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "dp_zoo.train", "--recipe", f"wrn_digits_eps{eps:g}", "--clipping", mode,
               "--no-publish", "--run-dir", os.path.join(d, "run")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        with open(os.path.join(d, "run", "run_record.json")) as f:
            record = json.load(f)
    which = record.get("published_weights") or "last"
    return {"epsilon_target": eps, "clipping": mode, "test_accuracy": record["metrics"][f"test_accuracy_{which}"],
            "published_weights": which, "epsilon": record["privacy"]["epsilon"],
            "sensitivity": record["privacy"]["clipping"]["sensitivity"], "process_seconds": round(seconds, 1),
            "final_l2_clip": record["privacy"]["clipping"].get("final_l2_clip")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wrn16_4")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--eps", type=float, nargs="+", default=[1, 8])
    p.add_argument("--out", default="benchmarks/results/clipping_modes.json")
    a = p.parse_args()
    import numpy as np

    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "model": a.model, "batch": a.batch, "augmult": 1, "repeats": a.repeats}
    out["speed"] = speed(a.model, a.batch, a.repeats)
    print(f"{'step':12s} {'s/step':>8s} {'vs flat (median of rounds)':>28s} {'first call s':>13s}")
    for name, r in out["speed"].items():
        print(f"{name:12s} {r['median_s']:8.3f} {np.median(r['over_flat']):27.3f}x {r['first_call_s']:13.1f}")
    if a.accuracy:
        out["accuracy"] = [accuracy(eps, mode) for eps in a.eps for mode in MODES]
        print(f"\n{'eps':>4s} {'clipping':10s} {'test acc':>8s} {'epsilon':>8s}")
        for r in out["accuracy"]:
            print(f"{r['epsilon_target']:4g} {r['clipping']:10s} {r['test_accuracy']:8.4f} {r['epsilon']:8.4f}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
