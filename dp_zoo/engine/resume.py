"""How a ``Trainer`` resumes and stops: restoring a run directory, and the stop signals.

Restoring (docs/privacy.md, "Crashes and resumes"): the newest good
checkpoint's state is loaded, and the privacy spent is the larger of the
checkpoint's ledger and the privacy journal's write-ahead count; with no
checkpoint left, the run restarts from step 0 and every journalled step
stays counted. Stopping: SIGTERM, and Ctrl-C where a checkpoint can be
written, ask the trainer to stop after the step in hand.
"""

import os
import signal
import sys

from dp_zoo import accounting
from dp_zoo.engine import checkpoint


class TrainingError(RuntimeError):
    """Training cannot continue (the message says why and what to do)."""


def restore(trainer):
    """Resumes ``trainer`` from the newest good checkpoint in its ``run_dir``; returns its step or None."""
    ckpt_dir = None if trainer.run_dir is None else checkpoint.checkpoint_dir(trainer.run_dir)
    if ckpt_dir is None or not os.path.isdir(ckpt_dir):
        return _restore_journal_only(trainer)
    found, errors = checkpoint.load_newest(ckpt_dir)
    if found is not None:
        _apply_checkpoint(trainer, *found)
        return trainer.step
    if errors:
        raise TrainingError(checkpoint.all_corrupt_message(ckpt_dir, errors))
    return _restore_journal_only(trainer)


def _restore_journal_only(trainer):
    # No checkpoint: the run restarts from step 0, and every journalled
    # step stays counted (their outputs were released and are not replayed
    # from a saved state).
    spent = trainer._journal_spent(replayable=False)
    if spent:
        trainer.ledger.steps = max(trainer.ledger.steps, spent)
    return None


def _apply_checkpoint(trainer, meta, arrays):
    if not checkpoint.same_config(meta["config"], trainer.config):
        raise TrainingError(
            f"The run directory {trainer.run_dir} holds a run with a different configuration. "
            "Resume with the same configuration, or use a new --run-dir."
        )
    checkpoint.assign_state(arrays, trainer.model, trainer.optimizer, trainer.averages, trainer.clip_state)
    trainer.step = int(meta["step"])
    trainer.history = list(meta["history"])
    trainer.wall_time_s = float(meta["wall_time_s"])
    trainer.nonfinite_steps = int(meta.get("nonfinite_steps", 0))
    ledger = accounting.PrivacyLedger.from_dict(meta["ledger"], expect=trainer.ledger)
    trainer.ledger.steps = max(ledger.steps, trainer._journal_spent())


def install_stop_handlers(trainer):
    """SIGTERM, and Ctrl-C (SIGINT) where a checkpoint can be written, stop ``trainer`` after the step in hand.

    A second Ctrl-C raises KeyboardInterrupt at once (the privacy journal,
    written before each step's noise, still counts that step). Returns the
    previous handlers, to put back.
    """
    def on_term(signum, frame):
        trainer._stop_requested = trainer._stop_requested or "SIGTERM"

    def on_int(signum, frame):
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested = "SIGINT"
        print(f"\nCtrl-C: finishing step {trainer.step + 1} and saving a checkpoint (Ctrl-C again to stop at "
              "once).", file=sys.stderr, flush=True)

    handlers = {signal.SIGTERM: on_term}
    if trainer.run_dir and trainer.write_run_dir:
        handlers[signal.SIGINT] = on_int
    previous = {}
    try:
        for sig, fn in handlers.items():
            previous[sig] = signal.signal(sig, fn)
    except ValueError:  # not in the main thread
        pass
    return previous
