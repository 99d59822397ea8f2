"""``python -m dp_zoo.train --strategy multiworker`` with two real worker processes.

Both workers run the same command line with a shared ``--run-dir`` (a shared
file system, TensorFlow's multi-worker convention). Worker 0 is the chief: it
shows the progress bar, writes checkpoints, the privacy journal and the run
record, and publishes. Worker 1 reads the run directory (to resume) but never
writes it. Both must finish with bit-identical weights (the CLI checks this
with an all-reduce and prints the SHA-256) and the accountant's epsilon.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from dp_zoo import accounting
from tests.helpers import free_ports

ARGS = ["--strategy", "multiworker", "--model", "wrn_test", "--steps", "3", "--batch-size", "64",
        "--physical-batch-size", "32", "--noise-multiplier", "1.0", "--checkpoint-every", "2"]


def run_cli_workers(extra, timeout=240):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "dp_zoo.train", *ARGS, *extra],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"worker {i}:\n{out[-2000:]}\n{err[-4000:]}"
    return outs


@pytest.mark.slow
def test_cli_two_workers_agree_and_only_the_chief_writes(tmp_path):
    run_dir, pub = tmp_path / "run", tmp_path / "pub"
    (out0, err0), (out1, err1) = run_cli_workers(["--run-dir", str(run_dir), "--publish-dir", str(pub)])

    sha0 = re.search(r"worker 0 \(chief\): weights sha256 ([0-9a-f]{64})", out0).group(1)
    m = re.search(r"worker 1: finished 3 steps, epsilon=([0-9.]+), weights sha256 ([0-9a-f]{64})", out1)
    assert m, out1
    assert m.group(2) == sha0  # same final weights, bit for bit

    eps = accounting.epsilon(noise_multiplier=1.0, sampling_probability=64 / 1437, steps=3, delta=1e-5)
    assert m.group(1) == f"{eps:.4f}" and f"epsilon={eps:.4f}" in out0

    rec = json.load(open(run_dir / "run_record.json"))  # written by the chief alone
    assert rec["weights_sha256"] == sha0
    assert rec["privacy"]["epsilon"] == eps and rec["privacy"]["steps"] == 3
    assert rec["hardware"]["num_replicas"] == 2
    assert rec["metrics"]["test_accuracy_last"] is not None and rec["metrics"]["test_accuracy_ema"] is not None
    assert json.load(open(pub / "card.json"))["privacy"]["epsilon"] == eps
    # Checkpoints every 2 steps and at exit, from one writer (no per-worker files).
    ckpts = sorted(os.listdir(run_dir / "checkpoints"))
    assert ckpts == ["ckpt-00000002.json", "ckpt-00000002.npz", "ckpt-00000003.json", "ckpt-00000003.npz"]
    from dp_zoo.data import sampling

    assert sorted(os.listdir(run_dir)) == sorted(["checkpoints", "privacy_journal.json", "run_record.json",
                                                  sampling.SECRET_FILE, "tensorboard"])
    # TensorBoard events come from the chief alone: one events file, not one per worker.
    assert len([f for f in os.listdir(run_dir / "tensorboard") if f.startswith("events.out.tfevents")]) == 1
    # One progress bar (the chief's); the other worker prints no accuracy either.
    assert "DP-SGD" in err0 and "DP-SGD" not in err1
    assert "accuracy" not in out1 and "published" not in out1

    # Re-running both workers resumes the finished run: no step is redone or re-spent.
    (out0, _), (out1, _) = run_cli_workers(["--run-dir", str(run_dir), "--nopublish", "--noprogress"])
    assert f"weights sha256 {sha0}" in out0 and f"weights sha256 {sha0}" in out1
    assert json.load(open(run_dir / "run_record.json"))["privacy"]["steps"] == 3
