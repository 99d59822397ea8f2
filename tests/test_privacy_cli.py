"""``python -m dp_zoo.privacy``: real processes for the exit codes, the rest through ``main()``.

Calibration cases use ``--accountant rdp`` (milliseconds per epsilon; a PLD
calibration takes 30-50 s here and is tested in test_accounting.py).
"""

import json
import subprocess
import sys

import pytest

from dp_zoo import accounting, privacy

BASE = ["--dataset-size", "50000", "--batch-size", "4096", "--delta", "1e-5"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dp_zoo.privacy", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_real_process_prints_json_and_exits_0_or_2():
    r = cli(*BASE, "--steps", "875", "--noise-multiplier", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    kw = dict(noise_multiplier=10.0, sampling_probability=4096 / 50000, steps=875, delta=1e-5)
    assert out["epsilon_rdp"] == accounting.epsilon(accountant="rdp", **kw)
    assert out["epsilon_pld"] == accounting.epsilon(accountant="pld", **kw)
    r = cli("--dataset-size", "10")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("dp_zoo.privacy: error:")


def test_calibrating_sigma_and_steps(capsys):
    assert privacy.main([*BASE, "--steps", "875", "--target-epsilon", "8", "--accountant", "rdp"]) == 0
    text = capsys.readouterr().out
    assert "sigma for epsilon <= 8 at 875 steps (RDP)" in text and "epsilon (RDP)" in text
    assert privacy.main([*BASE, "--steps", "875", "--target-epsilon", "8", "--accountant", "rdp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "calibrate_noise" and 8 * 0.999 <= out["epsilon_rdp"] <= 8
    assert out["epsilon_rdp"] == accounting.epsilon(noise_multiplier=out["noise_multiplier"],
                                                    sampling_probability=4096 / 50000, steps=875, delta=1e-5,
                                                    accountant="rdp")
    assert privacy.main([*BASE, "--noise-multiplier", "3", "--target-epsilon", "8", "--accountant", "rdp",
                         "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    kw = dict(noise_multiplier=3.0, sampling_probability=4096 / 50000, delta=1e-5, accountant="rdp")
    assert out["mode"] == "calibrate_steps" and out["steps"] > 0
    assert accounting.epsilon(steps=out["steps"], **kw) <= 8 < accounting.epsilon(steps=out["steps"] + 1, **kw)


@pytest.mark.parametrize("args,match", [
    (BASE + ["--steps", "10", "--noise-multiplier", "-1"], "noise_multiplier"),
    (["--dataset-size", "10"], "required"),
    (BASE + ["--steps", "10"], "pass --steps and --noise-multiplier"),
    (["--dataset-size", "100", "--batch-size", "500", "--delta", "1e-5", "--steps", "3", "--noise-multiplier", "1"],
     "--batch-size must be in"),
    (BASE + ["--target-epsilon", "8"], "pass --steps"),
    (BASE + ["--accountant", "moments", "--steps", "3", "--noise-multiplier", "1"], "accountant"),
])
def test_bad_input_exits_2_with_one_line(args, match, capsys):
    try:
        code = privacy.main(args)
    except SystemExit as e:  # argparse's errors (the parser prints its one line, then exits)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[0].startswith("dp_zoo.privacy: error:") and match in err.splitlines()[0]
