"""Per-example convolution kernel gradients: vectorized_map's loop against input patches and one einsum.

    python benchmarks/kernel_grad_paths.py [--repeats 7] [--out benchmarks/results/kernel_grad_paths.json]

A lead for the DP step's speed (issue #27), not a path dp_zoo takes yet. For
a 3x3 "same" convolution at the layer shapes of wrn_mnist (28x28x1 input,
batch 256) and WRN-16-4 (32x32x3, batch 64), two ways to get every
example's kernel gradient from its input and its output gradient:

- ``loop``: ``tf.vectorized_map`` of the tape's kernel gradient, as
  ``dp_zoo.dp.ws_fast_path`` forms a "plain" layer's rows today (pfor has no
  batched rule for Conv2DBackpropFilter and runs it as a while_loop over
  examples);
- ``unfold``: the input's patches (``tf.image.extract_patches``, as the
  ghost path's ``conv_patches``) contracted with the output gradient in one
  batched einsum.

Each is traced once, then both are timed in turn in every round
(wall-clock medians); the table gives unfold's time over the loop's and the
largest relative difference of their results.
"""

import argparse
import json
import os
import platform
import time

# (name, batch, height, in channels, out channels): the 3x3 convolutions of each stage.
SHAPES = (
    ("wrn_mnist 28x28", 256, 28, 8, 8),
    ("wrn_mnist 14x14", 256, 14, 16, 16),
    ("wrn_mnist 7x7", 256, 7, 32, 32),
    ("wrn16_4 32x32", 64, 32, 64, 64),
    ("wrn16_4 16x16", 64, 16, 128, 128),
    ("wrn16_4 8x8", 64, 8, 256, 256),
)


def _paths(batch, height, cin, cout):
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    x = rng.normal([batch, 1, height, height, cin])
    dy = rng.normal([batch, 1, height, height, cout])
    k = rng.normal([3, 3, cin, cout])

    @tf.function
    def loop():
        def one(args):
            xi, dyi = args
            with tf.GradientTape() as tape:
                tape.watch(k)
                y = tf.nn.conv2d(xi, k, 1, "SAME")
            return tape.gradient(y, k, output_gradients=dyi)
        return tf.vectorized_map(one, (x, dy), fallback_to_while_loop=True)

    @tf.function
    def unfold():
        p = tf.image.extract_patches(tf.reshape(x, [batch, height, height, cin]), [1, 3, 3, 1], [1, 1, 1, 1],
                                     [1, 1, 1, 1], "SAME")
        p = tf.reshape(p, [batch, height * height, 9 * cin])
        g = tf.einsum("bpk,bpo->bko", p, tf.reshape(dy, [batch, height * height, cout]))
        return tf.reshape(g, [batch, 3, 3, cin, cout])

    return loop, unfold


def measure(shape, repeats):
    """Median seconds of both paths at ``shape`` and the largest relative difference of their results."""
    import numpy as np
    import tensorflow as tf

    name, batch, height, cin, cout = shape
    loop, unfold = _paths(batch, height, cin, cout)
    a, b = loop(), unfold()
    rel = float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(a)))
    times = {"loop": [], "unfold": []}
    for _ in range(repeats):
        for key, fn in (("loop", loop), ("unfold", unfold)):
            t0 = time.perf_counter()
            fn().numpy()
            times[key].append(time.perf_counter() - t0)
    ratio = float(np.median([u / v for u, v in zip(times["unfold"], times["loop"])]))
    return {"shape": name, "batch": batch, "height": height, "cin": cin, "cout": cout,
            "loop_s": float(np.median(times["loop"])), "unfold_s": float(np.median(times["unfold"])),
            "unfold_over_loop": ratio, "max_rel_diff": rel}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/kernel_grad_paths.json")
    a = p.parse_args()
    rows = [measure(s, a.repeats) for s in SHAPES]
    print(f"{'layer':18s} {'batch':>5s} {'loop s':>8s} {'unfold s':>9s} {'unfold/loop':>12s} {'max rel diff':>13s}")
    for r in rows:
        print(f"{r['shape']:18s} {r['batch']:5d} {r['loop_s']:8.4f} {r['unfold_s']:9.4f} "
              f"{r['unfold_over_loop']:11.2f}x {r['max_rel_diff']:13.1e}")
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "repeats": a.repeats, "rows": rows}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
