"""``python -m dp_zoo.privacy``: real processes for the exit codes, the rest through ``main()``.

Calibration cases use ``--accountant rdp`` (milliseconds per epsilon; a PLD
calibration takes 30-50 s here and is tested in test_accounting.py).
"""

import json
import re
import subprocess
import sys

import pytest

from dp_zoo import accounting
from dp_zoo.commands import privacy

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
    (BASE + ["--steps", "10", "--noise-multiplier", "-1"], "--noise-multiplier must be a finite number > 0"),
    (BASE + ["--steps", "10", "--target-epsilon", "-1"], "--target-epsilon must be a finite number > 0"),
    (BASE + ["--steps", "10", "--target-epsilon", "inf"], "--target-epsilon must be a finite number > 0"),
    (BASE + ["--steps", "0", "--noise-multiplier", "1"], "--steps must be >= 1"),
    (["--dataset-size", "100", "--batch-size", "5", "--delta", "2", "--steps", "3", "--noise-multiplier", "1"],
     "--delta must be in (0, 1)"),
    (BASE + ["--steps", "1000000000", "--target-epsilon", "8"], "add --accountant rdp"),
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
    # Flags, not the library's Python names (target_epsilon=8.0, calibrate_noise(...)).
    assert not re.search(r"\b(target_epsilon|noise_multiplier|calibrate_noise)\b", err), err


def test_rdp_json_puts_dp_accountings_warnings_into_the_json_not_the_terminal():
    """dp-accounting warns once per RDP order it cannot compute (52 absl lines before); the JSON said
    "warnings": [] meanwhile."""
    r = cli("--dataset-size", "1437", "--batch-size", "128", "--steps", "6", "--noise-multiplier", "1.1",
            "--delta", "1e-5", "--accountant", "rdp", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Excluding this order" not in r.stderr and "WARNING" not in r.stderr, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert any("could not compute" in w and "RDP order" in w for w in out["warnings"]), out["warnings"]
    assert out["epsilon_rdp"] == accounting.epsilon(noise_multiplier=1.1, sampling_probability=128 / 1437, steps=6,
                                                    delta=1e-5, accountant="rdp")


def test_a_billion_steps_answers_with_rdp_and_says_why_there_is_no_pld():
    r = cli(*BASE, "--steps", "1000000000", "--noise-multiplier", "3", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["epsilon_pld"] is None and out["epsilon_rdp"] == accounting.epsilon(
        noise_multiplier=3.0, sampling_probability=4096 / 50000, steps=10**9, delta=1e-5, accountant="rdp")
    assert any("PLD epsilon not computed" in w for w in out["warnings"])


def test_a_bad_command_line_is_answered_before_the_accountant_or_tensorflow_loads():
    code = ("import sys\nfrom dp_zoo import privacy\ntry:\n    privacy.main(['--bogus'])\nexcept SystemExit as e:\n"
            "    print(e.code, sorted(m for m in ('tensorflow', 'dp_accounting', 'scipy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split(None, 1) == ["2", "[]\n"], (r.stdout, r.stderr[-2000:])
    assert privacy.ACCOUNTANTS == accounting.ACCOUNTANTS


def test_a_slow_computation_says_what_it_is_doing():
    import io
    import time

    from dp_zoo import cli as cli_lib

    out = io.StringIO()
    with cli_lib.announce_after(0.2, "calibrating...", stream=out):
        time.sleep(1.0)
    assert out.getvalue() == "calibrating...\n"
    out = io.StringIO()
    with cli_lib.announce_after(5.0, "calibrating...", stream=out):
        pass
    time.sleep(0.1)
    assert out.getvalue() == ""
