"""Nothing lost, nothing silently shared (issue #28): what ``--overwrite`` may replace, publishing
checks before the first step, a failed publish that keeps the model and says how to publish it, one
training per run directory, and ``--init`` of an artifact directory.

Where a check must come before training, ``run._load_data`` (the job's first step after the
checks) is replaced by one that fails the test: a check that comes later shows as "training
started"."""

import errno
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import dp_zoo
from dp_zoo import export
from dp_zoo.jobs import training as run
from dp_zoo.publish import artifact, manifest, zoo
from tests.helpers import TINY_TRAIN_ARGS, train_in_process


class TrainingStarted(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*a, **k):
        raise TrainingStarted("training started: the check came too late")

    monkeypatch.setattr(run, "_load_data", refuse)


def _tree(d):
    return sorted((str(p.relative_to(d)), p.read_bytes()) for p in d.rglob("*") if p.is_file())


def _own_folder(tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("four years of work")
    (d / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return d


# -- --overwrite ------------------------------------------------------------------------------


def test_overwrite_replaces_only_a_dp_zoo_artifact(tiny_artifact, tmp_path):
    path, model, rec = tiny_artifact
    mine = _own_folder(tmp_path)
    before = _tree(mine)
    with pytest.raises(FileExistsError, match="not a dp_zoo artifact") as e:
        export.export_model(model, rec, str(mine), entry_name="wrn_digits_eps8", overwrite=True, zoo_points=[])
    assert "\n" not in str(e.value) and "thesis.txt" in str(e.value)
    assert _tree(mine) == before
    # An artifact with a file of someone's own in it is not replaced either.
    art = tmp_path / "art"
    shutil.copytree(path, art)
    (art / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a dp_zoo artifact.*notes\.txt"):
        export.export_model(model, rec, str(art), entry_name="wrn_digits_eps8", overwrite=True, zoo_points=[])
    assert (art / "notes.txt").read_text() == "mine"
    # A real artifact (even a corrupted one) and an empty directory are replaced.
    os.remove(art / "notes.txt")
    (art / "model.keras").write_bytes(b"corrupt")
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (art, empty):
        export.export_model(model, rec, str(target), entry_name="wrn_digits_eps8", overwrite=True, zoo_points=[])
        manifest.verify(str(target))
        # Created with the user's umask, not mkdtemp's 0700.
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask


# -- publish checks before the first step -------------------------------------------------------


def _train(tmp_path, *extra):
    return train_in_process(*TINY_TRAIN_ARGS, "--run-dir", str(tmp_path / "run"), *extra)


def _one_error_line(err, match):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("dp_zoo.train: error:"), err[-3000:]
    assert match in lines[0], lines[0]


def test_publish_dir_rules_are_checked_before_training(tmp_path, no_training, capsys):
    mine = _own_folder(tmp_path)
    before = _tree(mine)
    assert _train(tmp_path, "--publish-dir", str(mine), "--overwrite") == 1
    _one_error_line(capsys.readouterr().err, "not a dp_zoo artifact")
    assert _tree(mine) == before
    assert _train(tmp_path, "--publish-dir", str(mine)) == 1
    _one_error_line(capsys.readouterr().err, "already exists")


def test_an_unwritable_dp_zoo_home_is_found_before_training(tmp_path, no_training, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DP_ZOO_HOME", str(blocker / "home"))
    assert _train(tmp_path) == 1
    _one_error_line(capsys.readouterr().err, "cannot publish")


def _make_read_only(d):
    """A directory this process cannot write (chmod; as root, the immutable attribute); None if neither works."""
    if os.geteuid() != 0:
        os.chmod(d, 0o555)
        return lambda: os.chmod(d, 0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(d)], check=True)
    return None


def test_a_read_only_dp_zoo_home_is_found_before_training(tmp_path, no_training, monkeypatch, capsys):
    home = tmp_path / "ro_home"
    home.mkdir()
    undo = _make_read_only(home)
    if undo is None:
        pytest.skip("cannot make a read-only directory here (root without chattr +i)")
    try:
        assert not os.access(home, os.W_OK) or os.geteuid() == 0
        monkeypatch.setenv("DP_ZOO_HOME", str(home))
        assert _train(tmp_path) == 1
        _one_error_line(capsys.readouterr().err, "cannot publish")
    finally:
        undo()


def test_a_failed_publish_is_one_line_and_keeps_the_model_with_the_command(tmp_path, monkeypatch, capsys):
    """A full disk at publish time (simulated): one line, the model in the run directory, and the
    command in that line publishes it."""
    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    pub = tmp_path / "pub"
    with monkeypatch.context() as m:
        m.setattr(artifact, "export_model", full_disk)  # what the training job calls
        assert _train(tmp_path, "--publish-dir", str(pub)) == 1
    err = capsys.readouterr().err
    _one_error_line(err, "No space left on device")
    assert (tmp_path / "run" / "model.keras").is_file() and not pub.exists()
    command = err.split("publish it with: ", 1)[1].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "dp_zoo.export"]
    from dp_zoo.commands import export as export_cli

    assert export_cli.main(argv[3:]) == 0, capsys.readouterr().err[-3000:]
    m = dp_zoo.load(str(pub))
    rec = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert m.card["privacy"] == rec["privacy"]


# -- one training per run directory -------------------------------------------------------------


# A live training as the lock sees it: a process holding an flock on <run_dir>/.lock with its PID in it
# (written out here, so that the test needs nothing of dp_zoo's lock to stand in for a first run).
_HOLD = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_training_on_a_run_directory_is_refused_naming_the_holder(tmp_path, no_training, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(tmp_path, "--nopublish") == 1
        _one_error_line(capsys.readouterr().err, f"in use by another training (PID {holder.pid})")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The holder died without cleaning up: its lock file stays, and does not block.
    from dp_zoo.engine import run_lock

    assert (run_dir / run_lock.FILENAME).read_text().strip() == str(holder.pid)
    with pytest.raises(TrainingStarted):
        _train(tmp_path, "--nopublish")


# -- --init of an artifact directory ------------------------------------------------------------


def test_init_of_an_artifact_directory_is_verified_and_keeps_its_provenance(tmp_path, capsys):
    from dp_zoo.jobs import init_weights

    src = tmp_path / "baseline"
    shutil.copytree(zoo.REPO_SAVED_MODELS / "wrn_digits_nonprivate", src)
    assert init_weights.init_format(str(src)) == "artifact"
    common = ["--model", "wrn_digits", "--init", str(src), "--steps", "1", "--lr", "1e-9", "--batch-size", "64",
              "--augmult", "1", "--noise-multiplier", "2.0", "--nopublish", "--noprogress"]
    # Its card says digits without privacy: the provenance rule applies as for the zoo entry.
    assert train_in_process(*common, "--run-dir", str(tmp_path / "r0")) == 2
    _one_error_line(capsys.readouterr().err, "without a privacy guarantee")
    run_dir = tmp_path / "r"
    assert train_in_process(*common, "--run-dir", str(run_dir), "--allow-nonprivate-init") == 0, \
        capsys.readouterr().err[-3000:]
    rec = json.loads((run_dir / "run_record.json").read_text())
    assert rec["model"]["init"]["kind"] == "nonprivate_same_data"
    assert rec["privacy"]["private"] is False and rec["privacy"]["epsilon"] is None
    want = dp_zoo.load(str(src))
    ckpt = np.load(sorted((run_dir / "checkpoints").glob("*.npz"))[-1])
    for i, v in enumerate(want.variables):
        np.testing.assert_allclose(ckpt[f"model/{i}"], v.numpy(), rtol=1e-5, atol=1e-6)
    # A tampered artifact directory is refused before anything runs.
    card = json.loads((src / "card.json").read_text())
    card["metrics"]["test_accuracy_last"] = 0.99
    (src / "card.json").write_text(json.dumps(card))
    assert train_in_process(*common, "--run-dir", str(tmp_path / "r2"), "--allow-nonprivate-init") == 2
    _one_error_line(capsys.readouterr().err, "card.json")
