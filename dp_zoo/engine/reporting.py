"""What the engine shows while it trains: the progress bar and TensorBoard scalars.

Both are published outputs (docs/privacy.md), so they carry only public
quantities and evaluation-split metrics: no rate, elapsed or remaining time,
no realised batch sizes, no per-example norms.
"""

import os

import tensorflow as tf


def progress_bar(total, initial, private):
    """A tqdm bar over the logical steps, showing only counts and its postfix."""
    from tqdm.auto import tqdm

    # No rate, elapsed or remaining time: a step's duration grows with its
    # realised Poisson batch size, which depends on the private data.
    return tqdm(total=total, initial=initial, desc="DP-SGD" if private else "SGD",
                unit="step", dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps{postfix}")


def update_bar(bar, eps, entry):
    """Advances ``bar`` by one step; its postfix is the epsilon bound and the last evaluation accuracy."""
    post = [] if eps is None else [f"eps<={eps:.3f}"]
    if entry["eval_accuracy"] is not None:
        post.append(f"acc={entry['eval_accuracy']:.3f}")
    if entry.get("l2_clip") is not None:
        post.append(f"C={entry['l2_clip']:.3g}")
    # One redraw per step (the update's), the postfix already in it.
    bar.set_postfix_str(", ".join(post), refresh=False)
    bar.update(1)


def log_scalars(writer, run_dir, step, entry):
    """TensorBoard scalars of history ``entry`` under ``run_dir/tensorboard``; returns the writer.

    ``writer`` is None on the first call (it is created then, so a run that
    never logs writes no event file). Only the epsilon and the metrics on the
    evaluation split, on the public log schedule. No speed: a step's duration
    depends on its realised batch size. (Event files carry their write times:
    totals over the log interval, operational like the run's wall time.)
    """
    if writer is None:
        writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))
    with writer.as_default(step=step):
        if entry["epsilon"] is not None:
            tf.summary.scalar("privacy/epsilon", entry["epsilon"])
        if entry.get("l2_clip") is not None:  # adaptive clipping's C_t (from the noisy counts)
            tf.summary.scalar("privacy/l2_clip", entry["l2_clip"])
        for key in ("eval_accuracy", "eval_accuracy_ema", "loss"):
            if entry[key] is not None:
                tf.summary.scalar("eval/" + ("loss" if key == "loss" else key[5:]), entry[key])
    return writer
