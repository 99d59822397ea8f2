"""Crash safety with real training subprocesses: SIGTERM, then SIGKILL at a random point.

The privacy ledger must survive: after kills and resumes, the step count, the
epsilon and the final weights equal an uninterrupted run's (same seed,
--deterministic: seeded batches and noise, op determinism on, so a redone step
replays the lost one bit for bit), and no step is lost from or counted twice in the ledger.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ARGS = ["--steps", "8", "--batch-size", "128", "--physical-batch-size", "64", "--augmult", "2",
        "--noise-multiplier", "1.5", "--checkpoint-every", "1", "--deterministic",
        "--nopublish", "--noprogress", "--seed", "5"]


def start(run_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "dp_zoo.train", *ARGS, "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def final_state(run_dir):
    rec = json.load(open(run_dir / "run_record.json"))
    ck = sorted(f for f in os.listdir(run_dir / "checkpoints") if f.endswith(".npz"))[-1]
    arrays = np.load(run_dir / "checkpoints" / ck)
    return rec, {k: arrays[k] for k in arrays.files if k.startswith("model/")}


def wait_for_step(run_dir, min_step, timeout=120):
    """Waits until a checkpoint at or after ``min_step`` exists."""
    t0 = time.time()
    d = run_dir / "checkpoints"
    while time.time() - t0 < timeout:
        if d.exists():
            steps = [int(f[5:13]) for f in os.listdir(d) if f.endswith(".json")]
            if steps and max(steps) >= min_step:
                return max(steps)
        time.sleep(0.05)
    raise AssertionError("training made no progress")


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    """One run stopped twice, as a cluster would: SIGTERM after step 2 (the step in hand finishes, a
    checkpoint is saved, exit 0 within seconds), then SIGKILL at a random point after step 5, then
    resumed to the end: the same steps, epsilon and weights as an uninterrupted run."""
    from tensorflow.python.framework import config as tf_config

    from tests.helpers import train_in_process

    ref_dir = tmp_path / "ref"
    try:  # the uninterrupted reference, in this process (the same code path as the subprocesses)
        assert train_in_process(*ARGS, "--run-dir", str(ref_dir)) == 0
    finally:
        tf_config.disable_op_determinism()  # --deterministic turned it on for this process
    ref_rec, ref_w = final_state(ref_dir)

    run_dir = tmp_path / "interrupted"
    p = start(run_dir)
    wait_for_step(run_dir, 2)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    assert time.time() - t0 < 30
    assert "SIGTERM" in err + out
    step = wait_for_step(run_dir, 2, timeout=1)
    assert json.load(open(run_dir / "privacy_journal.json"))["ledger"]["steps"] >= step

    p = start(run_dir)
    wait_for_step(run_dir, 5)
    time.sleep(random.Random(0).uniform(0.0, 0.6))  # somewhere inside a step or a save
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert json.load(open(run_dir / "privacy_journal.json"))["ledger"]["steps"] >= 5

    p = start(run_dir)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    rec, w = final_state(run_dir)
    assert rec["privacy"]["steps"] == ref_rec["privacy"]["steps"] == 8
    # --deterministic: published as not private, with the accountant's nominal epsilon.
    assert rec["privacy"]["nominal_epsilon"] == ref_rec["privacy"]["nominal_epsilon"]
    assert set(w) == set(ref_w)
    for k in ref_w:
        np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_with_one_line_and_the_resumed_run_says_from_where(tmp_path):
    """Ctrl-C (SIGINT) as a user presses it: no traceback, one line naming the step and how to resume
    (exit status 130); the same command then says it resumed, and from which step."""
    run_dir = tmp_path / "run"
    p = start(run_dir)
    wait_for_step(run_dir, 2, timeout=600)  # start-up and tracing take minutes on a loaded 2-core machine
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    step = wait_for_step(run_dir, 2, timeout=1)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == (f"dp_zoo.train: stopped by SIGINT at step {step} of 8; checkpoint saved in {run_dir}. "
                         f"To resume from step {step}, run the same command again."), err[-2000:]
    assert len([ln for ln in lines if "Ctrl-C" in ln or "SIGINT" in ln]) == 2  # the acknowledgement, the summary
    p = start(run_dir)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert f"Resumed {run_dir} from its checkpoint at step {step} of 8." in out
    assert json.load(open(run_dir / "run_record.json"))["privacy"]["steps"] == 8
