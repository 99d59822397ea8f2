"""What every dp_zoo command line shares (dp_zoo/cli.py): flag spellings, one-line errors, console
scripts, and a start without TensorFlow's C++ noise. Each CLI's own behaviour is tested with it
(tests/train/test_cli.py, test_serve.py, test_export.py, test_privacy_cli.py, test_audit.py)."""

import importlib.metadata
import logging
import os
import re
import subprocess
import sys

import pytest

from dp_zoo import cli

SCRIPTS = {"dp-zoo-train": "dp_zoo.train", "dp-zoo-export": "dp_zoo.export", "dp-zoo-serve": "dp_zoo.serve",
           "dp-zoo-privacy": "dp_zoo.privacy", "dp-zoo-audit": "dp_zoo.audit",
           "dp-zoo-zoo": "dp_zoo.zoo", "dp-zoo-tune": "dp_zoo.tune", "dp-zoo-data": "dp_zoo.data"}


def _parser():
    p = cli.Parser("dp_zoo.demo")
    p.option("run-dir", "workdir")
    p.option("batch-size", type=int)
    p.switch("publish", default=True, help="")
    p.switch("streaming", default=None, help="")
    return p


@pytest.mark.parametrize("argv,want", [
    ([], dict(run_dir=None, batch_size=None, publish=True, streaming=None)),
    (["--run-dir", "a", "--batch-size", "3"], dict(run_dir="a", batch_size=3)),
    (["--run_dir", "a", "--batch_size", "3"], dict(run_dir="a", batch_size=3)),  # absl's spelling
    (["--workdir", "a"], dict(run_dir="a")),  # an alias
    (["--no-publish", "--streaming"], dict(publish=False, streaming=True)),
    (["--nopublish", "--nostreaming"], dict(publish=False, streaming=False)),  # absl's negation
    (["--publish=false", "--streaming=true"], dict(publish=False, streaming=True)),
    (["--no-publish=false"], dict(publish=True)),
])
def test_flag_spellings(argv, want):
    args = vars(_parser().parse_args(argv))
    assert {k: args[k] for k in want} == want


@pytest.mark.parametrize("argv,match", [
    (["--batch-size", "lots"], "argument --batch-size: invalid int value: 'lots'"),
    (["--publish=maybe"], "--publish takes true or false"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--batch"], "unrecognized arguments: --batch"),  # no abbreviations: they would shadow aliases
])
def test_a_bad_command_line_is_one_line_and_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("dp_zoo.demo: error: ") and match in err


def test_help_lists_the_documented_spellings_only(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--run-dir RUN_DIR" in out and "--publish, --no-publish" in out
    assert "--run_dir" not in out and "--nopublish" not in out


def test_console_scripts_run_their_cli(monkeypatch, capsys):
    """Every CLI has a console script in the installed metadata, and it runs that CLI."""
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
           if ep.name.startswith("dp-zoo")}
    assert sorted(eps) == sorted(SCRIPTS), "stale metadata? pip install -e . --no-deps"
    for name, module in SCRIPTS.items():
        script = eps[name].load()
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        with pytest.raises(SystemExit) as e:
            script()
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def test_cli_hides_pfor_advice_but_not_other_tensorflow_warnings():
    cli.quiet_tensorflow()
    cli.quiet_tensorflow()  # idempotent: one filter
    logger = logging.getLogger("tensorflow")
    assert sum(isinstance(f, cli._DropPforAdvice) for f in logger.filters) == 1

    def shown(msg):
        record = logger.makeRecord("tensorflow", logging.WARNING, "pfor.py", 1, msg, (), None)
        return all(f.filter(record) for f in logger.filters)

    assert not shown("Conv2DBackpropFilter uses a while_loop. Fix that!")
    assert shown("Something else went wrong")


# What TensorFlow prints on start-up on a machine without a GPU (TF 2.21), unless silenced.
TF_NOISE = re.compile(r"cudart_stub|cuda_platform|cuInit|cpu_feature_guard|To enable the following instructions|"
                      r"oneDNN|absl::InitializeLog|Unable to register cu")


@pytest.mark.slow  # a process that imports TensorFlow
def test_no_tensorflow_startup_noise(tmp_path):
    """A CLI that imports TensorFlow as it loads prints its own error and nothing of TensorFlow's."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the user set nothing
    r = subprocess.run([sys.executable, "-m", "dp_zoo.export", "--artifact", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert not [ln for ln in r.stderr.splitlines() if TF_NOISE.search(ln)], r.stderr
    [line] = r.stderr.splitlines()  # the CLI's own error, after TensorFlow was imported
    assert line.startswith("dp_zoo.export: error: ") and "MANIFEST" in line


def test_output_to_takes_python_and_file_descriptor_output_and_restores_the_console(tmp_path, capfd):
    """What dp_zoo.tune runs its trials inside: Python prints, and C-level writes to fds 1 and 2
    (TensorFlow's C++ logging), go to the file; the console is back after the block, also after
    an exception."""
    import os
    import sys

    from dp_zoo import cli

    log = tmp_path / "private.log"
    print("before")
    with cli.output_to(str(log)):
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"fd 1\n")
        os.write(2, b"fd 2\n")
    with pytest.raises(RuntimeError):
        with cli.output_to(str(log)):
            raise RuntimeError("inside")
    print("after")
    out, err = capfd.readouterr()
    assert out == "before\nafter\n" and err == ""
    assert set(log.read_text().splitlines()) == {"python stdout", "python stderr", "fd 1", "fd 2"}
