"""The run's secret: where it comes from, and how every worker gets the chief's (docs/privacy.md).

A private run keys batch selection and noise with a 256-bit secret from OS
entropy, kept in ``run_dir`` (so a run resumed from a checkpoint replays its batches)
and nowhere else; with several workers the chief's secret is shared by an
all-reduce, so every worker draws the same batches and adds the SAME noise
(noise once per logical step, globally). A ``deterministic`` run derives it
from the public seed instead.

A secret serves one sequence of steps only. Once it has drawn noise (the
privacy journal counts the steps) and no checkpoint is left to resume, the
next run in that directory starts at step 0, possibly with another
configuration: reusing the secret would give it the same batches and the
same noise as the steps already released, and the noise would cancel
between the two. Such a run draws a new secret; the journalled steps still
count (``engine.Trainer.restore``).
"""

import numpy as np
import tensorflow as tf

from dp_zoo.data import sampling
from dp_zoo.engine import checkpoint

NO_AGREEMENT = ("The workers could not agree on the run secret (global replica 0 is not on the chief). "
                "Name the chief in TF_CONFIG (task type 'chief', or 'worker' 0).")


def run_secret(config, strategy, run_dir, write_run_dir):
    """The run's ``sampling.RunSecret``, or None when the workers could not agree on one.

    ``write_run_dir`` is False on non-chief workers: they neither read nor
    create a secret file, and take the chief's. The caller raises on None
    (with ``NO_AGREEMENT``), so that the error keeps the engine's type.
    """
    if config.deterministic:
        return sampling.RunSecret.from_seed(config.seed)
    if multi_worker(strategy):
        own = stored_or_new(run_dir) if write_run_dir else None
        return share_from_chief(strategy, own)
    return stored_or_new(run_dir if write_run_dir else None)


def stored_or_new(run_dir):
    """The secret of ``run_dir`` while it can only replay its own steps; otherwise a new one.

    The stored secret is kept when a checkpoint is left to resume (the engine
    refuses one of another configuration) or when it never drew noise; a
    secret whose journalled steps have no checkpoint behind them is retired.
    """
    if run_dir is not None and checkpoint.journalled_steps(run_dir) and not checkpoint.has_checkpoint(run_dir):
        print(f"{run_dir} has no checkpoint to resume: this run starts at step 0 with a new secret "
              "(its privacy journal's steps still count).")
        return sampling.create_secret(run_dir)
    return sampling.load_or_create_secret(run_dir)


def multi_worker(strategy):
    """Whether ``strategy`` spans several workers (a cluster spec with any task in it)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = getattr(resolver, "cluster_spec", None) if resolver is not None else None
    return bool(spec and spec().as_dict())


def share_from_chief(strategy, own):
    """The chief's secret on every worker (one all-reduce SUM; only global replica 0 contributes).

    None when the sum is not one worker's secret (global replica 0 had no
    secret, or several replicas contributed one).
    """
    words = np.zeros(sampling.SECRET_BYTES // 4, np.int64)
    if own is not None:
        words = np.frombuffer(own.to_bytes(), "<u4").astype(np.int64)
    parts = tf.constant(words)
    shared = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.run(lambda: parts if tf.distribute.get_replica_context().replica_id_in_sync_group == 0
                     else tf.zeros_like(parts)), axis=None)
    shared = shared.numpy()
    if not shared.any() or shared.max() >= 2 ** 32:
        return None
    return sampling.RunSecret(shared.astype("<u4").tobytes())
