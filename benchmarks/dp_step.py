"""DP-SGD step cost vs a non-private step, same model and batch, same run.

    python benchmarks/dp_step.py [--model wrn_digits] [--batch 64] [--augmult 1 4] [--repeats 5]
                                 [--ghost auto off] [--fold auto off] [--unfold off auto on] [--precision bf16]
                                 [--out benchmarks/results/dp_step.json]

Prints a table and writes the rows as JSON to --out. Timings are
wall-clock medians after a warm-up call (tf.function tracing excluded), all
steps (non-private and DP, every K) timed in turn in each round.
``--ghost`` lists the ghost-clipping modes of ``clipped_grad_sum`` to time
(``auto``: the default, ``off``: per-example kernel gradients for every WS
layer, ``on``: ghost norms for every WS layer) and ``--fold`` its
gain-folding modes (``fold_gain``: ``auto``, ``off``, ``on``), ``--unfold``
its patch-based kernel gradients (``unfold``: ``auto``, the default,
``off``, ``on``); every combination is timed against the same non-private step. ``views/s vs plain K=1`` is the DP step's augmented views
per second over the non-private step's examples per second at K=1.
``--precision bf16`` adds the same steps under Keras' mixed_bfloat16 (both
the DP and the non-private step: the ratio compares like with like), after
the float32 rows, which are always timed as the reference.

    python benchmarks/dp_step.py --check [--repeats 5]

is the CI guard against the DP step slowing down (``.ci/run``): WRN-16-4,
batch 64, 32x32x3, the default DP step (``ghost``, ``fold_gain`` and ``unfold`` "auto")
at K=1 and K=4 against the non-private step at the same K, all four timed
in turn in each round. For each K the ratio (DP views/s over non-private
views/s) is taken per round and its median over the rounds compared with
``CHECK_FLOORS``; a set of rounds below a floor is measured once more, and
the script exits 1 if that one is below too. Only ratios within one process
count, so the machine's speed and (within reason) its other load cancel.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf

import dp_zoo
from dp_zoo import dp


def first_call_time(fn):
    """Seconds of the first call: tracing + compilation + one run."""
    t0 = time.perf_counter()
    out = fn()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
    return time.perf_counter() - t0


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def interleaved_medians(fns, repeats):
    """Median seconds per call of each function, timed in turn in every round.

    Interleaving keeps slow drifts of the machine (clock, other load) from
    favouring whichever step happens to be timed first.
    """
    ts = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
            ts[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in ts.items()}


# The guard's floors (``--check``) on WRN-16-4, batch 64, 32x32x3, DP against non-private at the same K:
# the targets are 0.85x (K=1) and 0.9x (K=4); the floors leave room for a noisy machine. Issue #27
# measured b1826ee's centred moments at 0.41-0.51x (K=1) and 0.17-0.20x (K=4, against K=1).
CHECK_MODEL, CHECK_INPUT, CHECK_BATCH = "wrn16_4", [32, 32, 3], 64
CHECK_FLOORS = {1: 0.70, 4: 0.75}
CHECK_ATTEMPTS = 2

MODES = {"auto": "auto", "on": True, "off": False}  # --ghost / --fold value -> clipped_grad_sum(ghost=/fold_gain=)


def _path(model, ws_path, ghost, fold, unfold, k, input_shape):
    """Which per-example gradient path ran, in words (traces the step once to see the per-layer choices)."""
    if not ws_path:
        return "tf.vectorized_map per-example grads (generic); Conv2DBackpropFilter runs as pfor's while_loop"
    paths = dp.ws_gradient_paths(model, [k] + list(input_shape), MODES[ghost], MODES[fold], MODES[unfold])
    unfolded = sum(p == "unfold" for p in paths.values())
    ghost = [n for n, p in paths.items() if p == "ghost"]
    fold = [n for n, p in paths.items() if p == "fold"]
    return (f"tf.vectorized_map per-example grads w.r.t. standardized kernels and gains, closed-form WS norms, "
            f"WS backward once on the clipped sum; of {len(paths)} WS convs: ghost norms for {len(ghost)}"
            + (f" ({', '.join(ghost)})" if ghost and len(ghost) < len(paths) else "")
            + f", gain folded into the kernel for {len(fold)}, gain apart for the other {len(paths) - len(ghost) - len(fold)}"
            + (f" ({unfolded} of them from input patches and one einsum)" if unfolded else "")
            + ("; the other WS kernel gradients: Conv2DBackpropFilter as pfor's while_loop over examples"
               if len(paths) - len(ghost) - unfolded else ""))


def check(repeats):
    """The CI guard: 0 if the DP step's per-round ratios to the non-private step clear ``CHECK_FLOORS``, else 1."""
    model = dp_zoo.create_model(CHECK_MODEL, num_classes=10, input_shape=tuple(CHECK_INPUT))
    y = tf.random.uniform([CHECK_BATCH], 0, 10, tf.int32)
    fns = {}
    for k in CHECK_FLOORS:
        x = tf.random.normal([CHECK_BATCH, k] + CHECK_INPUT)
        fns[("plain", k)] = tf.function(lambda x=x: dp.mean_grad(model, x, y)[0])
        fns[("dp", k)] = tf.function(lambda x=x: dp.clipped_grad_sum(model, x, y, l2_clip=1.0)[0])
    first = {key: first_call_time(fn) for key, fn in fns.items()}
    print(f"{CHECK_MODEL}, batch {CHECK_BATCH}, {'x'.join(map(str, CHECK_INPUT))}, first calls (tracing + one step): "
          + ", ".join(f"{'DP' if kind == 'dp' else 'non-private'} K={k} {t:.1f} s" for (kind, k), t in first.items()))
    k1 = min(CHECK_FLOORS)
    for attempt in range(1, CHECK_ATTEMPTS + 1):
        ts = {key: [] for key in fns}
        for _ in range(repeats):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                tf.nest.map_structure(lambda t: t.numpy(), fn())
                ts[key].append(time.perf_counter() - t0)
        # Per round, DP views/s over non-private views/s at the same K (what is checked), and over
        # non-private examples/s at K=1 (README's last column; under other load the non-private
        # step's own K=4 / K=1 rate drifts, so it is shown, not checked).
        same_k = {k: float(np.median([p / d for p, d in zip(ts[("plain", k)], ts[("dp", k)])])) for k in CHECK_FLOORS}
        vs_k1 = {k: float(np.median([k * p / d for p, d in zip(ts[("plain", k1)], ts[("dp", k)])]))
                 for k in CHECK_FLOORS}
        low = [k for k, floor in CHECK_FLOORS.items() if same_k[k] < floor]
        print(f"attempt {attempt} (medians of {repeats} rounds):")
        for k, floor in CHECK_FLOORS.items():
            print(f"  K={k}: DP {np.median(ts[('dp', k)]):.3f} s/step, non-private {np.median(ts[('plain', k)]):.3f} "
                  f"s/step; DP / non-private {same_k[k]:.2f}x (floor {floor:.2f}x{', BELOW' if k in low else ''}); "
                  f"DP views/s / non-private K={k1} examples/s {vs_k1[k]:.2f}x")
        if not low:
            print("dp_step check passed")
            return 0
    print("dp_step check FAILED: the DP step is slower against the non-private step than its floor allows")
    return 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="wrn_digits")
    p.add_argument("--input", type=int, nargs=3, default=[8, 8, 1])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--augmult", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ghost", nargs="+", default=["auto"], choices=list(MODES))
    p.add_argument("--fold", nargs="+", default=["auto"], choices=list(MODES))
    p.add_argument("--unfold", nargs="+", default=["auto"], choices=list(MODES))
    p.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "bf16"],
                   help="bf16 adds mixed_bfloat16 rows next to the float32 ones")
    p.add_argument("--out", default="benchmarks/results/dp_step.json")
    p.add_argument("--check", action="store_true",
                   help="the CI guard: WRN-16-4's DP/non-private ratios against CHECK_FLOORS; exit 1 below them")
    a = p.parse_args()
    if a.check:
        raise SystemExit(check(a.repeats))
    precisions = ["float32"] + [q for q in a.precision if q != "float32"]
    model = dp_zoo.create_model(a.model, num_classes=10, input_shape=tuple(a.input))
    rows = []
    ws_path = bool(dp.ws_kernels(model))
    fns = {}
    modes = [(g, f, u) for g in a.ghost for f in a.fold for u in a.unfold]
    for k in a.augmult:
        x = tf.random.normal([a.batch, k] + a.input)
        y = tf.random.uniform([a.batch], 0, 10, tf.int32)
        for q in precisions:
            fns[(q, k, "plain")] = tf.function(lambda x=x, y=y, q=q: dp.mean_grad(model, x, y, precision=q)[0])
            for mode in modes:
                fns[(q, k, mode)] = tf.function(
                    lambda x=x, y=y, g=MODES[mode[0]], f=MODES[mode[1]], u=MODES[mode[2]], q=q:
                    dp.clipped_grad_sum(model, x, y, l2_clip=1.0, ghost=g, fold_gain=f, precision=q, unfold=u)[0])
    first = {key: first_call_time(fn) for key, fn in fns.items()}
    # Every step of every K in each round: the ratios across K (views/s at K
    # against examples/s at K=1) compare steps timed minutes apart otherwise.
    times = interleaved_medians(fns, a.repeats)
    for q in precisions:
        plain_k1 = a.batch / times[(q, 1, "plain")] if (q, 1, "plain") in times else None
        for k in a.augmult:
            t_plain = times[(q, k, "plain")]
            for mode in modes:
                t_dp = times[(q, k, mode)]
                rows.append({"model": a.model, "batch": a.batch, "augmult": k, "ghost": mode[0],
                             "fold_gain": mode[1], "unfold": mode[2], "precision": q,
                             "path": _path(model, ws_path, *mode, k, a.input),
                             "dp_first_step_s": first[(q, k, mode)], "nonprivate_first_step_s": first[(q, k, "plain")],
                             "peak_rss_mib_after": peak_rss_mib(),
                             "dp_step_s": t_dp, "nonprivate_step_s": t_plain,
                             "dp_examples_per_s": a.batch / t_dp, "nonprivate_examples_per_s": a.batch / t_plain,
                             "dp_views_per_s": a.batch * k / t_dp,
                             "dp_views_per_s_over_nonprivate_k1_examples_per_s":
                                 (a.batch * k / t_dp) / plain_k1 if plain_k1 else None,
                             "slowdown": t_dp / t_plain})
    print(f"{'model':12s} {'batch':>5s} {'K':>3s} {'ghost':>5s} {'fold':>5s} {'unf':>4s} {'prec':>7s} {'DP s/step':>10s} "
          f"{'plain s/step':>12s} "
          f"{'DP ex/s':>9s} {'plain ex/s':>10s} {'DP/plain':>8s} {'views/s vs plain K=1':>20s} "
          f"{'DP 1st s':>8s} {'peak MiB':>8s}")
    for r in rows:
        vs = r["dp_views_per_s_over_nonprivate_k1_examples_per_s"]
        print(f"{r['model']:12s} {r['batch']:5d} {r['augmult']:3d} {r['ghost']:>5s} {r['fold_gain']:>5s} {r['unfold']:>4s} "
              f"{r['precision']:>7s} "
              f"{r['dp_step_s']:10.4f} "
              f"{r['nonprivate_step_s']:12.4f} {r['dp_examples_per_s']:9.1f} {r['nonprivate_examples_per_s']:10.1f} "
              f"{1 / r['slowdown']:7.2f}x {('%.2fx' % vs) if vs else '-':>20s} "
              f"{r['dp_first_step_s']:8.1f} {r['peak_rss_mib_after']:8.0f}")
    for r in rows:
        if r["precision"] == precisions[0]:
            print(f"path (K={r['augmult']}, ghost {r['ghost']}, fold {r['fold_gain']}, unfold {r['unfold']}): "
                  f"{r['path']}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"host": platform.platform(), "cpu_count": os.cpu_count(),
                   "tensorflow": tf.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
