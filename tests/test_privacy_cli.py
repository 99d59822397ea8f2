"""``python -m dp_zoo.privacy`` as a user runs it (real subprocesses)."""

import json
import subprocess
import sys

from dp_zoo import accounting

BASE = ["--dataset-size", "50000", "--batch-size", "4096", "--delta", "1e-5"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dp_zoo.privacy", *args],
                          capture_output=True, text=True, timeout=120)


def test_epsilon_json_matches_library():
    r = cli(*BASE, "--steps", "875", "--noise-multiplier", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    kw = dict(noise_multiplier=10.0, sampling_probability=4096 / 50000, steps=875, delta=1e-5)
    assert out["epsilon_rdp"] == accounting.epsilon(accountant="rdp", **kw)
    assert out["epsilon_pld"] == accounting.epsilon(accountant="pld", **kw)


def test_human_output_and_calibration():
    r = cli(*BASE, "--steps", "875", "--target-epsilon", "8")
    assert r.returncode == 0, r.stderr
    assert "sigma for epsilon <= 8" in r.stdout and "epsilon (RDP)" in r.stdout
    r = cli(*BASE, "--noise-multiplier", "3", "--target-epsilon", "8", "--json")
    out = json.loads(r.stdout)
    assert out["mode"] == "calibrate_steps" and out["epsilon_pld"] <= 8 and out["steps"] > 0


def test_bad_input_exit_2_without_traceback():
    for args in (BASE + ["--steps", "10", "--noise-multiplier", "-1"],
                 ["--dataset-size", "10"],
                 BASE + ["--steps", "10"],
                 ["--dataset-size", "100", "--batch-size", "500", "--delta", "1e-5", "--steps", "3", "--noise-multiplier", "1"]):
        r = cli(*args)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr and "error:" in r.stderr
