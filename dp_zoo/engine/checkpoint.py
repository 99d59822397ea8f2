"""Crash-safe files of a run directory: checkpoints and the privacy journal (docs/design.md).

Checkpoints (``run_dir/checkpoints/ckpt-<step>.npz`` + ``.json`` with the
SHA-256 of the npz) are written to a temporary name and renamed, so a kill
during a save leaves the previous checkpoint intact; the ``.json`` is the
commit point. ``load_newest`` skips a corrupt newest checkpoint for the
previous good one and reports every one it could not use, so that the
engine can refuse a run directory whose checkpoints are all corrupt.

The privacy journal (``run_dir/privacy_journal.json``) holds the ledger
written ahead of each noise draw and the replay identity: what must match
for a step redone after a crash to be bit-identical to the lost one, the
only case in which the redo costs no more budget.
"""

import hashlib
import io
import json
import os
import sys

import numpy as np
import tensorflow as tf

from dp_zoo import accounting

CHECKPOINT_KEEP = 2


def atomic_write_bytes(path, data):
    """Writes ``data`` to ``path`` through a temporary file and a rename (never a torn file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path, obj):
    """``atomic_write_bytes`` of ``obj`` as indented, key-sorted JSON."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def checkpoint_dir(run_dir):
    """Where the checkpoints of ``run_dir`` live."""
    return os.path.join(run_dir, "checkpoints")


def journal_path(run_dir):
    """The privacy journal of ``run_dir``."""
    return os.path.join(run_dir, "privacy_journal.json")


# -- the privacy journal -------------------------------------------------------


def op_determinism_enabled():
    """Whether ``tf.config.experimental.enable_op_determinism()`` is on (False if unknown)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # conservative: replays then count
        return False


def noise_device(strategy):
    """Where the noise is drawn: ``"<strategy>:<device type>"`` (see ``replay_identity``)."""
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        kind = "TPU"
    else:
        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return f"{type(strategy).__name__}:{kind}"


def replay_identity(config, secret, num_replicas, device):
    """What must match for a redone step to be bit-identical to a lost one.

    The same configuration and secret give the same batches and noise
    seeds; the same replica count and device kind the same reductions
    and the same normals (XLA draws other stateless normals than the CPU
    kernel for one seed, tests/train/test_xla.py); op determinism rules
    out run-to-run differences in the kernels themselves.
    """
    return {
        "config_sha256": hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest(),
        "secret": secret.fingerprint(),
        "num_replicas": int(num_replicas),
        "device": device,
        "op_determinism": op_determinism_enabled(),
    }


def write_journal(run_dir, ledger, identity, step_in_progress):
    """Writes the ledger ahead of the noise of step ``step_in_progress``."""
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(journal_path(run_dir), {
        "ledger": ledger.to_dict(),
        "replay": identity,
        "step_in_progress": step_in_progress,
    })


def journalled_steps(run_dir):
    """The steps the privacy journal of ``run_dir`` says drew noise (0 without a journal)."""
    if run_dir is None or not os.path.exists(journal_path(run_dir)):
        return 0
    with open(journal_path(run_dir)) as f:
        return int(json.load(f)["ledger"]["steps"])


def journal_spent(run_dir, ledger, identity_fn, replayable=True):
    """Steps the journal says were spent, or 0 when the lost ones are replayed bit-identically.

    Args:
      run_dir: the run directory (None: no journal).
      ledger: this run's ledger; the journal's must describe the same run.
      identity_fn: ``() -> replay_identity(...)`` of this process.
      replayable: False when no saved state is replayed (every step counts).
    """
    if run_dir is None or not os.path.exists(journal_path(run_dir)):
        return 0
    with open(journal_path(run_dir)) as f:
        j = json.load(f)
    accounting.PrivacyLedger.from_dict(j["ledger"], expect=ledger)
    replay = j.get("replay")
    if replayable and replay is not None and replay.get("op_determinism") and replay == identity_fn():
        # The redone steps release exactly the lost steps' outputs again.
        return 0
    return int(j["ledger"]["steps"])


# -- checkpoints -----------------------------------------------------------------


def _averaged(averages):
    return (("ema", averages.ema_vars), ("polyak", averages.polyak_vars))


def state_arrays(model, optimizer, averages, clip_state=None):
    """Every variable of the training state, by checkpoint key (``clip_state``: adaptive clipping's C_t)."""
    arrays = {}
    for i, v in enumerate(model.variables):
        arrays[f"model/{i}"] = np.asarray(v.numpy())
    for i, v in enumerate(optimizer.variables):
        arrays[f"opt/{i}"] = np.asarray(v.numpy())
    for name, vs in _averaged(averages):
        for i, v in enumerate(vs or []):
            arrays[f"{name}/{i}"] = v.numpy()
    arrays["polyak_count"] = np.asarray(averages.polyak_count.numpy())
    if clip_state is not None:
        arrays["adaptive_l2_clip"] = np.asarray(clip_state.numpy())
    return arrays


def assign_state(arrays, model, optimizer, averages, clip_state=None):
    """Loads ``state_arrays``' output back into the variables."""
    for i, v in enumerate(model.variables):
        v.assign(arrays[f"model/{i}"])
    for i, v in enumerate(optimizer.variables):
        v.assign(arrays[f"opt/{i}"])
    for name, vs in _averaged(averages):
        for i, v in enumerate(vs or []):
            v.assign(arrays[f"{name}/{i}"])
    averages.polyak_count.assign(int(arrays["polyak_count"]))
    if clip_state is not None:
        # The exact float32 C_t the lost steps clipped at: a redone step is then bit-identical.
        clip_state.assign(np.asarray(arrays["adaptive_l2_clip"], np.float32))


def save(ckpt_dir, step, arrays, meta):
    """Atomically writes checkpoint ``step`` (``arrays`` + ``meta``), keeps the newest ones; returns its base path."""
    os.makedirs(ckpt_dir, exist_ok=True)
    base = os.path.join(ckpt_dir, f"ckpt-{step:08d}")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(base + ".npz", data)
    meta = {"step": step, "sha256": hashlib.sha256(data).hexdigest(), **meta}
    # The .json is the commit point: a checkpoint exists once it does.
    atomic_write_json(base + ".json", meta)
    prune(ckpt_dir)
    return base


def prune(ckpt_dir, keep=CHECKPOINT_KEEP):
    """Removes all but the ``keep`` newest checkpoints."""
    metas = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(".json"))
    for f in metas[:-keep]:
        for ext in (".json", ".npz"):
            try:
                os.remove(os.path.join(ckpt_dir, f[:-5] + ext))
            except FileNotFoundError:
                pass


def load(base):
    """``(meta, arrays)`` of the checkpoint at ``base``; ValueError if the npz fails its checksum."""
    with open(base + ".json") as f:
        meta = json.load(f)
    with open(base + ".npz", "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError(f"checksum mismatch in {base}.npz")
    return meta, np.load(io.BytesIO(data))


def has_checkpoint(run_dir):
    """Whether ``run_dir`` holds a checkpoint (usable or not: ``load_newest`` tells)."""
    d = checkpoint_dir(run_dir)
    return os.path.isdir(d) and any(f.endswith(".json") for f in os.listdir(d))


def load_newest(ckpt_dir):
    """The newest usable checkpoint in ``ckpt_dir``.

    Returns:
      ``((meta, arrays) or None, errors)``: None with no errors when there is
      no checkpoint; None with errors when every checkpoint is unusable.
    """
    metas = sorted((f for f in os.listdir(ckpt_dir) if f.endswith(".json")), reverse=True)
    errors = []
    for f in metas:
        base = os.path.join(ckpt_dir, f[:-5])
        try:
            return load(base), errors
        except Exception as e:  # corrupt or truncated: try the previous one
            errors.append(f"{os.path.basename(base)}: {e}")
            print(f"warning: skipping unusable checkpoint {base}: {e}", file=sys.stderr)
    return None, errors


def same_config(saved, config):
    """Whether a checkpoint's ``saved`` config dict configures the same run as ``config``."""
    try:
        # As a TrainConfig, so that keys an older version wrote and that
        # configure nothing (from_dict drops them) do not block a resume.
        return type(config).from_dict(saved) == config
    except (TypeError, ValueError):  # fields this version does not know
        return False


def all_corrupt_message(ckpt_dir, errors):
    """Why a run whose checkpoints are all unusable must not restart (the engine raises it)."""
    return (f"Every checkpoint in {ckpt_dir} is corrupt ({'; '.join(errors)}). "
            "Refusing to restart from scratch, which would reset the privacy budget: "
            "restore a checkpoint from backup or start a new run in a new directory "
            "(its privacy cost adds to this one's).")
