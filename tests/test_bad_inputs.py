"""Bad input across the public surfaces: a clear error that names the problem
and the fix, and nothing on disk damaged (byte-identical afterwards)."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import time

import numpy as np
import pytest

import dp_zoo
from dp_zoo import accounting, export
from dp_zoo import data
from dp_zoo.commands import export as export_command
from dp_zoo.engine import trainer as engine
from dp_zoo.publish import zoo
from dp_zoo.recipes import config as C
from tests.helpers import train_in_process


def tree_hash(root):
    """{relative path: sha256} of every file, and {relative path + "/": "dir"} of every directory."""
    h = {}
    for d, dirs, files in os.walk(root):
        for sub in dirs:
            h[os.path.relpath(os.path.join(d, sub), root) + "/"] = "dir"
        for f in files:
            p = os.path.join(d, f)
            h[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return h


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_run):
    """A copy of a finished run directory and of its published artifact, to protect."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(trained_run["run_dir"], root / "run")
    shutil.copytree(trained_run["artifact"], root / "home" / "wrn_digits_eps8")
    # Verifying a card caches the accountant's recomputation in the user cache (card_check); done once
    # here, so that a case that loads or serves the artifact changes nothing.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        zoo.card(str(root / "home" / "wrn_digits_eps8"))
    return {"root": root, "record": trained_run["record"], "model": trained_run["model"],
            "config": trained_run["config"], "train": trained_run["train"]}


def stderr_of(fn, *args):
    """(return value or SystemExit code, what ``fn`` printed to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = fn(*args)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def export_cli(*argv):
    """``python -m dp_zoo.export ARGV`` in this process, through the CLI's ``main()``."""
    return stderr_of(export_command.main, list(argv))


def case_load_unknown(w):
    with pytest.raises(ValueError, match=r"Did you mean: .*wrn_digits_eps8"):
        dp_zoo.load("wrn_digits_eps9")


def case_load_unpublished(w):
    with pytest.raises(zoo.ArtifactNotPublishedError, match="python -m dp_zoo.train --recipe wrn16_4_cifar10_eps8"):
        dp_zoo.load("wrn16_4_cifar10_eps8")


def case_load_bad_path(w):
    with pytest.raises(ValueError, match="MANIFEST"):
        dp_zoo.load(str(w["root"] / "run"))


def case_create_unknown(w):
    with pytest.raises(ValueError, match="wrn16_4"):
        dp_zoo.create_model("wrn16_5", num_classes=10)


def case_create_num_classes(w):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        dp_zoo.create_model("wrn_test", num_classes=-3)


def case_create_input_shape(w):
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\)"):
        dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8))


def case_create_bad_depth(w):
    with pytest.raises(ValueError, match="6n\\+4"):
        dp_zoo.create_model("wrn_test", num_classes=10, depth=11)


def case_make_private_no_noise(w):
    with pytest.raises(ValueError, match="noise_multiplier or target_epsilon"):
        dp_zoo.make_private(w["model"], l2_clip=1.0, dataset_size=100, batch_size=10)


def case_make_private_no_plan(w):
    with pytest.raises(ValueError, match="epochs= or steps="):
        dp_zoo.make_private(w["model"], l2_clip=1.0, dataset_size=100, batch_size=10, target_epsilon=2.0)


def case_make_private_clip(w):
    with pytest.raises(ValueError, match="l2_clip must be > 0"):
        dp_zoo.make_private(w["model"], l2_clip=0.0, dataset_size=100, batch_size=10, noise_multiplier=1.0)


def case_make_private_batch(w):
    with pytest.raises(ValueError, match="batch_size must be in"):
        dp_zoo.make_private(w["model"], l2_clip=1.0, dataset_size=100, batch_size=1000, noise_multiplier=1.0)


def eps(**kw):
    base = dict(noise_multiplier=1.0, sampling_probability=0.01, steps=10, delta=1e-5)
    base.update(kw)
    return accounting.epsilon(**base)


def case_eps_sigma(w):
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number > 0"):
        eps(noise_multiplier=0)


def case_eps_q(w):
    with pytest.raises(ValueError, match=r"batch_size / dataset_size"):
        eps(sampling_probability=2.0)


def case_eps_steps(w):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        eps(steps=0)


def case_eps_delta(w):
    with pytest.raises(ValueError, match="delta < 1/N"):
        eps(delta=1.0)


def case_eps_shuffle(w):
    with pytest.raises(ValueError, match="Use sampling='poisson'"):
        eps(sampling="shuffle")


def case_calibrate_negative(w):
    with pytest.raises(ValueError, match="target_epsilon must be a finite number > 0"):
        accounting.calibrate_noise(target_epsilon=-1, sampling_probability=0.01, steps=10, delta=1e-5)


def case_ledger_mismatch(w):
    d = accounting.PrivacyLedger(1.0, 0.01, 1e-5, 1000).to_dict()
    with pytest.raises(ValueError, match="Resume with the original settings"):
        accounting.PrivacyLedger.from_dict(d, expect=accounting.PrivacyLedger(2.0, 0.01, 1e-5, 1000))


def case_privacy_cli(w):
    from dp_zoo.commands import privacy

    code, err = stderr_of(privacy.main, ["--dataset-size", "100", "--batch-size", "10", "--delta", "1e-5",
                                         "--steps", "0", "--noise-multiplier", "1"])
    assert code == 2 and "--steps must be >= 1" in err and "Traceback" not in err


def case_train_cli_flags(w):
    code, err = stderr_of(train_in_process, "--lr", "-1", "--nopublish", "--run-dir", str(w["root"] / "x"))
    assert code == 2 and "--lr must be > 0" in err and "Traceback" not in err


def case_train_cli_init_missing(w):
    code, err = stderr_of(train_in_process, "--init", "/no/such.keras", "--nopublish")
    assert code == 2 and "no such file" in err


def case_train_cli_other_config_in_run_dir(w):
    # sigma given: the default recipe with --steps would otherwise calibrate it first (PLD, ~40 s).
    code, err = stderr_of(train_in_process, "--run-dir", str(w["root"] / "run"), "--steps", "3",
                          "--noise-multiplier", "1.0", "--nopublish", "--noprogress")
    assert code != 0
    assert "different configuration" in err and "new --run-dir" in err
    assert "Traceback" not in err


def case_resume_mismatched_config(w):
    cfg = w["config"].replace(batch_size=32)
    t = engine.Trainer(dp_zoo.create_model("wrn_test", num_classes=10), cfg, w["train"],
                       run_dir=str(w["root"] / "run"), progress=False)
    with pytest.raises((engine.TrainingError, ValueError), match="different configuration"):
        t.restore()


def case_export_exists(w):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_model(w["model"], w["record"], str(w["root"] / "home" / "wrn_digits_eps8"), entry_name="x")


def case_export_no_stats(w):
    rec = dict(w["record"], data={})
    with pytest.raises(ValueError, match="mean/std"):
        export.export_model(w["model"], rec, str(w["root"] / "new1"), entry_name="x")


def case_export_bad_record(w):
    rec = {k: v for k, v in w["record"].items() if k != "privacy"}
    with pytest.raises(ValueError, match="privacy"):
        export.export_model(w["model"], rec, str(w["root"] / "new2"), entry_name="x")


def case_dataset_unknown(w):
    with pytest.raises(ValueError, match="cifar10"):
        data.load_dataset(C.DataConfig(dataset="cifar11"), "train")


def case_dataset_offline(w):
    os.environ["DP_ZOO_ALLOW_DOWNLOAD"] = "0"
    try:
        t0 = time.time()
        with pytest.raises(data.DataUnavailableError, match="tfds build svhn_cropped"):
            data.load_dataset(C.DataConfig(dataset="svhn_cropped", data_dir=str(w["root"] / "tfds")), "train")
        assert time.time() - t0 < 10
    finally:
        del os.environ["DP_ZOO_ALLOW_DOWNLOAD"]


def case_split_unknown(w):
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_dataset(C.DataConfig(), "dev")


def case_export_cli_not_an_artifact(w):
    code, err = export_cli("--artifact", str(w["root"] / "run"), "--register")
    assert code != 0 and "has no MANIFEST.json" in err and "Traceback" not in err


def case_publish_bad_handle(w):
    code, err = export_cli("--artifact", str(w["root"] / "home" / "wrn_digits_eps8"), "--kaggle-handle", "bad",
                           "--dry-run")
    assert code != 0 and "<owner>/<model>/<framework>/<variation>" in err
    assert "Traceback" not in err


def _post(url, body):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _serving(w):
    from dp_zoo.publish.serve import ModelServer

    return ModelServer(str(w["root"] / "home" / "wrn_digits_eps8"), port=0, name="digits")


def case_serve_bad_json(w):
    with _serving(w) as srv:
        status, body = _post(srv.url + ":predict", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]


def case_serve_wrong_shape(w):
    with _serving(w) as srv:
        status, body = _post(srv.url + ":predict", json.dumps({"instances": [[[0] * 3] * 3]}).encode())
    assert status == 400 and "images must have shape [N, 8, 8, 1]" in body["error"]


def case_serve_pixel_range(w):
    img = np.full((8, 8, 1), 300).tolist()
    with _serving(w) as srv:
        status, body = _post(srv.url + ":predict", json.dumps({"instances": [img]}).encode())
    assert status == 400 and "0..255" in body["error"]


def case_serve_unknown_model(w):
    with _serving(w) as srv:
        status, body = _post(srv.url.replace("/digits", "/nope") + ":predict", b"{}")
    assert status == 404 and "serving 'digits'" in body["error"]


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input(case, world, monkeypatch):
    monkeypatch.setenv("DP_ZOO_HOME", str(world["root"] / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(world["root"] / "cache"))
    before = tree_hash(world["root"])
    case(world)
    after = tree_hash(world["root"])
    # Byte-identical: nothing changed, removed, or left behind (a temporary directory, a stray run dir).
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert (sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys()), changed) == ([], [], [])
