"""Hostile artifacts (issue #28, "Artifact integrity"): a MANIFEST that points outside the artifact,
symlinks, devices, unlisted files, a served directory that was never verified, and a card that
disagrees with its run record or with the accountant. Each artifact is built here, in tmp dirs,
from the session's real export (or a copy of a shipped one)."""

import hashlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import dp_zoo
from dp_zoo.cards.model_card import ModelCard, fmt_eps
from dp_zoo.publish import manifest, serve, zoo
from tests import _zoo_helpers as H


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _manifest(d):
    return json.loads((d / manifest.FILENAME).read_text())


def _write_manifest(d, m):
    (d / manifest.FILENAME).write_text(json.dumps(m))


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- MANIFEST paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("outside", ["../../../../../../etc/passwd", "/etc/hostname"])
def test_a_manifest_entry_outside_the_artifact_is_refused_and_reveals_nothing(outside, tiny_artifact, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "a")
    target = outside if outside.startswith("/") else os.path.normpath(os.path.join(d, outside))
    m = _manifest(d)
    m["files"][outside] = {"sha256": _sha(target), "bytes": os.path.getsize(target)}
    _write_manifest(d, m)
    with pytest.raises(ValueError, match="not a relative path inside the artifact"):
        dp_zoo.card(str(d))
    # With a wrong checksum and size, the error must not say how large the outside file is.
    m["files"][outside] = {"sha256": "0" * 64, "bytes": 1}
    _write_manifest(d, m)
    with pytest.raises(ValueError) as e:
        manifest.verify(str(d))
    message = str(e.value).replace(str(d), "<artifact>")
    assert "not a relative path inside the artifact" in message
    assert "bytes" not in message and str(os.path.getsize(target)) not in message


def test_a_device_listed_with_zero_bytes_is_refused_at_once(tiny_artifact, tmp_path):
    """``/dev/zero`` with ``bytes: 0`` hashed forever; a FIFO inside the artifact blocked on open."""
    d = _copy(tiny_artifact[0], tmp_path / "a")
    m = _manifest(d)
    m["files"]["/dev/zero"] = {"sha256": hashlib.sha256(b"").hexdigest(), "bytes": 0}
    _write_manifest(d, m)
    code = f"from dp_zoo import manifest\ntry:\n    manifest.verify({str(d)!r})\nexcept ValueError as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "not a relative path inside the artifact" in r.stdout, r.stderr[-2000:]
    del m["files"]["/dev/zero"]
    os.mkfifo(d / "pipe")
    m["files"]["pipe"] = {"sha256": hashlib.sha256(b"").hexdigest(), "bytes": 0}
    _write_manifest(d, m)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "not a regular file" in r.stdout, r.stderr[-2000:]


def test_a_symlink_anywhere_in_the_artifact_is_refused(tiny_artifact, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "a")
    os.remove(d / "README.md")
    os.symlink("/etc/passwd", d / "README.md")
    manifest.write(str(d), "wrn_digits_eps8")  # anyone can write a self-consistent manifest
    with pytest.raises(ValueError, match=r"README\.md.*symbolic link"):
        dp_zoo.card(str(d))
    # A symlinked directory on the way to a listed file.
    d2 = _copy(tiny_artifact[0], tmp_path / "b")
    shutil.move(str(d2 / "plots"), str(tmp_path / "elsewhere"))
    os.symlink(tmp_path / "elsewhere", d2 / "plots")
    with pytest.raises(ValueError, match=r"plots.*symbolic link"):
        manifest.verify(str(d2))


def test_an_unlisted_file_is_refused(tiny_artifact, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "a")
    (d / "saved_model" / "1" / "assets" / "extra.txt").parent.mkdir(exist_ok=True)
    (d / "saved_model" / "1" / "assets" / "extra.txt").write_text("not listed")
    with pytest.raises(ValueError, match=r"does not list.*extra\.txt"):
        manifest.verify(str(d))


def test_a_manifest_of_the_wrong_shape_is_refused_in_one_line(tiny_artifact, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "a")
    m = _manifest(d)
    m["files"]["model.keras"]["bytes"] = "12"
    _write_manifest(d, m)
    with pytest.raises(ValueError, match="MANIFEST.json.*model.keras") as e:
        manifest.verify(str(d))
    assert "\n" not in str(e.value)


# -- serve ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_export(tmp_path_factory):
    """A second valid export (other weights) whose SavedModel can be swapped in."""
    from dp_zoo import export

    root = tmp_path_factory.mktemp("other")
    model = H.tiny_model(seed=5)
    rec = H.run_record(num_params=model.count_params())
    return export.export_model(model, rec, str(root / "wrn_digits_eps8"), entry_name="wrn_digits_eps8",
                               zoo_points=[])


def test_serve_refuses_an_unlisted_version(tiny_artifact, other_export, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "wrn_digits_eps8")
    shutil.copytree(os.path.join(other_export, "saved_model", "1"), d / "saved_model" / "2")
    with pytest.raises(ValueError, match=r"does not list.*saved_model/2"):
        serve.ModelServer(str(d), port=0)


def test_serve_serves_only_the_versions_its_manifest_lists(tiny_artifact, tmp_path):
    """An empty numeric directory (nothing unlisted in it) is not a version: the listed one is served."""
    d = _copy(tiny_artifact[0], tmp_path / "wrn_digits_eps8")
    (d / "saved_model" / "9").mkdir()
    s = serve.ModelServer(str(d), port=0)
    try:
        assert s.model.version == 1
    finally:
        s.httpd.server_close()


def test_serve_refuses_a_swapped_or_corrupted_saved_model(tiny_artifact, other_export, tmp_path, capsys):
    d = _copy(tiny_artifact[0], tmp_path / "wrn_digits_eps8")
    shutil.rmtree(d / "saved_model" / "1")
    shutil.copytree(os.path.join(other_export, "saved_model", "1"), d / "saved_model" / "1")
    with pytest.raises(ValueError, match=r"(Checksum mismatch|truncated or changed).*saved_model/1"):
        serve.ModelServer(str(d), port=0)
    # Given as the SavedModel base directory, it is verified as the artifact it belongs to.
    with pytest.raises(ValueError, match=r"(Checksum mismatch|truncated or changed).*saved_model/1"):
        serve.ModelServer(str(d / "saved_model"), port=0)
    d2 = _copy(tiny_artifact[0], tmp_path / "flipped" / "wrn_digits_eps8")
    var = next((d2 / "saved_model" / "1" / "variables").glob("variables.data-*"))
    data = bytearray(var.read_bytes())
    data[len(data) // 2] ^= 0xFF
    var.write_bytes(bytes(data))
    assert serve.main([str(d2), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dp_zoo.serve: error: Checksum mismatch") and err.count("\n") == 1, err[-3000:]


def test_serve_refuses_a_directory_that_is_not_an_artifact(tiny_artifact, tmp_path):
    base = tmp_path / "bare"
    shutil.copytree(os.path.join(tiny_artifact[0], "saved_model"), base)
    with pytest.raises(ValueError, match="no MANIFEST.json"):
        serve.ModelServer(str(base), port=0)


# -- the card against its run record and the accountant ----------------------------------------


def _edit_card(d, edit):
    card = json.loads((d / "card.json").read_text())
    edit(card)
    (d / "card.json").write_text(json.dumps(card, indent=2))
    manifest.write(str(d), card.get("name"))


def _set_eps(value, headline=False):
    def edit(card):
        old = card["privacy"]["epsilon"]
        card["privacy"]["epsilon"] = value
        if headline:
            card["headline"] = card["headline"].replace(f"({fmt_eps(old)},", f"({fmt_eps(value)},")
    return edit


@pytest.mark.parametrize("edit,what", [
    (_set_eps("8"), "string"),
    (_set_eps(float("nan")), "nan"),
    (_set_eps(0.1, headline=True), "smaller, with a matching headline"),
])
def test_a_card_that_disagrees_with_its_run_record_is_refused(edit, what, tiny_artifact, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "a")
    _edit_card(d, edit)
    card = json.loads((d / "card.json").read_text())
    if what == "smaller, with a matching headline":
        assert card["headline"].startswith("(0.1, 1e-05)")
    with pytest.raises(ValueError, match=r"card\.json.*does not match its run_record\.json.*privacy") as e:
        dp_zoo.card(str(d))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not match its run_record"):
        dp_zoo.load(str(d))


def _forge_record(d, edit):
    """A self-consistent forgery: the record edited, the card rebuilt from it, the manifest rewritten."""
    rec = json.loads((d / "run_record.json").read_text())
    edit(rec)
    (d / "run_record.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
    name = json.loads((d / "card.json").read_text())["name"]
    with open(d / "card.json", "w") as f:
        json.dump(ModelCard.from_run_record(name, rec).to_json(), f, indent=2)
    manifest.write(str(d), name)
    return rec


def test_a_record_whose_epsilon_the_accountant_does_not_give_is_refused(tiny_artifact, tmp_path):
    d = _copy(tiny_artifact[0], tmp_path / "a")

    def understate(rec):
        p = rec["privacy"]
        p["epsilon"] = p["epsilon_pld"] = 0.1

    _forge_record(d, understate)
    with pytest.raises(ValueError, match=r"privacy\.epsilon.*0\.1.*accountant gives") as e:
        dp_zoo.card(str(d))
    assert "\n" not in str(e.value)


def test_a_forged_tuning_total_is_refused(tmp_path):
    """A shipped tuned model (copied) whose total is lowered everywhere it appears."""
    d = _copy(zoo.REPO_SAVED_MODELS / "wrn_digits_eps8", tmp_path / "wrn_digits_eps8")
    dp_zoo.card(str(d))  # the copy itself is fine

    def lower(rec):  # consistent with itself: total >= one trial's >= the selected run's
        p = rec["privacy"]
        p["epsilon"] = p["epsilon_rdp"] = p["tuning"]["total_epsilon"] = 1.0
        p["tuning"]["per_trial_epsilon"] = 0.7
        p["tuning"]["selected_trial_epsilon"] = {"pld": 0.4, "rdp": 0.5}
        for run in p["tuning"]["runs"]:  # each grid point's own epsilon, below the per-trial one
            run["epsilon"] = 0.7

    _forge_record(d, lower)
    with pytest.raises(ValueError, match=r"privacy\.epsilon.*accountant gives 7\.99"):
        dp_zoo.card(str(d))


def test_a_consistent_artifact_loads_and_the_recomputation_is_cached_by_record_hash(tiny_artifact, monkeypatch):
    from dp_zoo.cards import check as card_check
    from dp_zoo.cards.model_card import record_sha256

    card_check.clear_memory_cache()
    c = dp_zoo.card(tiny_artifact[0])
    # The artifact's own record (export adds published_weights_sha256 to the one it was given).
    rec = json.loads((pathlib.Path(tiny_artifact[0]) / "run_record.json").read_text())
    assert c["privacy"]["epsilon"] == tiny_artifact[2]["privacy"]["epsilon"]
    cached = list((zoo.cache_dir() / card_check.CACHE_SUBDIR).glob("*.json"))
    assert [p.stem.split("-")[0] for p in cached] == [record_sha256(rec)]
    stored = json.loads(cached[0].read_text())
    assert stored["recomputed"]["privacy.epsilon"] == rec["privacy"]["epsilon"]
    # The next check reads the cache: the accountant is not called again.
    card_check.clear_memory_cache()

    def no_accountant(*a, **k):
        raise AssertionError("recomputed although cached")

    with monkeypatch.context() as m:
        m.setattr(card_check, "_recompute", no_accountant)
        assert dp_zoo.card(tiny_artifact[0])["privacy"]["epsilon"] == rec["privacy"]["epsilon"]
    # A damaged cache entry that disagrees with the record is recomputed, not believed: the good
    # model loads and the entry is repaired.
    stored["recomputed"]["privacy.epsilon"] = 123.0
    cached[0].write_text(json.dumps(stored))
    card_check.clear_memory_cache()
    assert dp_zoo.card(tiny_artifact[0])["privacy"]["epsilon"] == rec["privacy"]["epsilon"]
    assert json.loads(cached[0].read_text())["recomputed"]["privacy.epsilon"] == rec["privacy"]["epsilon"]


def test_the_shipped_models_pass_the_check():
    shipped = sorted(p.name for p in zoo.REPO_SAVED_MODELS.iterdir() if (p / "MANIFEST.json").exists())
    assert {"wrn_digits_eps8", "wrn_digits_nonprivate"} <= set(shipped)
    for name in shipped:
        c = dp_zoo.card(str(zoo.REPO_SAVED_MODELS / name))
        assert c["name"] == name
        assert c["privacy"]["epsilon"] is None or math.isfinite(c["privacy"]["epsilon"])


def test_a_downloaded_archive_with_a_symlink_is_refused_and_leaves_nothing(tiny_artifact, tmp_path, monkeypatch):
    """An in-tree symlink passes tarfile's "data" filter; verification refuses it before it is put in place."""
    import tarfile

    stage = _copy(tiny_artifact[0], tmp_path / "stage" / "wrn_digits_eps8")
    os.remove(stage / "README.md")
    os.symlink("card.json", stage / "README.md")
    manifest.write(str(stage), "wrn_digits_eps8")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(stage, arcname="wrn_digits_eps8")
    table = tmp_path / "zoo_entries.json"
    table.write_text(json.dumps({"schema_version": zoo.TABLE_SCHEMA_VERSION, "entries": {"wrn_digits_eps8": {
        "manifest_sha256": _sha(stage / manifest.FILENAME), "remote": f"file://{archive}",
        "archive_sha256": _sha(archive)}}}))
    monkeypatch.setattr(zoo, "TABLE_PATH", table)
    monkeypatch.setattr(zoo, "REPO_SAVED_MODELS", tmp_path / "no_repo_models")
    with pytest.raises(ValueError, match=r"README\.md.*symbolic link"):
        dp_zoo.card("wrn_digits_eps8")
    assert not (zoo.cache_dir() / "wrn_digits_eps8").exists()
    assert [p.name for p in zoo.cache_dir().iterdir() if not p.name == "epsilon_checks"] == []


def test_a_cached_check_needs_no_accountant_in_a_fresh_process():
    """The second check of a record, in a new process, reads the cache: dp-accounting is not even imported."""
    code = ("import sys, dp_zoo; c = dp_zoo.card('wrn_digits_eps8'); "
            "print(c['privacy']['epsilon'], 'dp_accounting' in sys.modules)")
    env = dict(os.environ)
    env.pop("DP_ZOO_HOME", None)  # the shipped artifact, from the repository's saved_models/
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    eps = str(json.loads((zoo.REPO_SAVED_MODELS / "wrn_digits_eps8" / "card.json").read_text())["privacy"]["epsilon"])
    assert runs[0].stdout.split() == [eps, "True"]  # computed: the cache was empty
    assert runs[1].stdout.split() == [eps, "False"]
