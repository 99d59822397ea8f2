"""The zoo: the entries table, load / card / list_models, search order, checksums, download."""

import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import dp_zoo
from dp_zoo import export
from dp_zoo import preprocessing
from dp_zoo.commands import zoo as zoo_cli
from dp_zoo.publish import listing, zoo
from dp_zoo.publish import manifest
from dp_zoo.recipes import recipes
from tests import _zoo_helpers as H

PAPER_ENTRIES = (
    [f"wrn16_4_cifar10_eps{e}" for e in (1, 2, 4, 8)]
    + [f"wrn40_4_cifar10_eps{e}" for e in (1, 2, 4, 8)]
    + ["nf_resnet50_imagenet_eps8", "nf_resnet50_imagenet_tan_eps8", "nfnet_f3_imagenet_finetune_eps0.5",
       "nfnet_f3_imagenet_finetune_eps8", "wrn28_10_cifar100_finetune_eps1"]
)
DIGITS_ENTRIES = [f"wrn_digits_eps{e}" for e in (1, 2, 4, 8)] + ["wrn_digits_nonprivate"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty search path and a private copy of the table."""
    home, cache, repo = tmp_path / "home", tmp_path / "xdg", tmp_path / "repo_saved_models"
    for d in (home, cache, repo):
        d.mkdir()
    monkeypatch.setenv("DP_ZOO_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setattr(zoo, "REPO_SAVED_MODELS", repo)
    table = tmp_path / "zoo_entries.json"
    # A private table with nothing registered: the shipped digits artifacts'
    # checksums must not leak into tests that build their own artifacts.
    table.write_text(json.dumps({"schema_version": zoo.TABLE_SCHEMA_VERSION, "entries": {}}))
    monkeypatch.setattr(zoo, "TABLE_PATH", table)
    return {"home": home, "cache": cache / "dp_zoo", "repo": repo, "tmp": tmp_path}


@pytest.fixture
def artifact(tiny_artifact):
    """The session's tiny exported artifact: read-only, tests copy it where they need one."""
    return tiny_artifact


def _copy(artifact, base, name="wrn_digits_eps8"):
    dest = base / name
    shutil.copytree(artifact[0], dest)
    return dest


def test_every_recipe_is_an_entry_described_by_its_recipe():
    table = zoo.entries()
    assert set(table) == set(recipes.RECIPES)
    for name in PAPER_ENTRIES + DIGITS_ENTRIES:
        assert name in table, name
    for name, e in table.items():
        r = recipes.get(name)
        assert e["recipe"] == name and e["architecture"] == r.config.model, name
        assert e["dataset"] == r.config.data.dataset and e["needs_accelerator"] == r.needs_accelerator, name
        assert e["private"] == r.config.dp.enabled == (e["target_epsilon"] is not None), name
        assert e["target_epsilon"] == r.config.dp.target_epsilon, name
        assert e["delta"] == (r.config.dp.delta if e["private"] else None), name
        assert e["published_accuracy"] == r.published_accuracy, name
        assert e["config_source"] == r.provenance, name
        if e["published_accuracy"] is not None:
            # a figure only next to a publication's configuration, labelled as its source's
            assert e["config_source"] != recipes.OWN_CHOICE and e["published_accuracy_source"], name
        else:
            assert e["published_accuracy_source"] is None, name
        # dp_zoo's accountant beside the target, for every private entry
        assert (e["epsilon_rdp"] is None) == (e["epsilon_pld"] is None) == (not e["private"]), name
    # dp_zoo's own configurations (here: WRN-40-4 at eps=1, MNIST) carry no paper figure; nor do the
    # configurations built on the paper's remembered, unverified sigma, which say so.
    for name in ("wrn40_4_cifar10_eps1", "wrn_mnist_eps8"):
        assert table[name]["config_source"] == recipes.OWN_CHOICE and table[name]["published_accuracy"] is None
    e = table["wrn40_4_cifar10_eps8"]
    assert e["config_label"] == "De2022s" and "unverified" in e["config_source"] and e["published_accuracy"] is None
    assert table["wrn_digits_nonprivate"]["delta"] is None and table["wrn16_4_cifar10_eps8"]["delta"] == 1e-5


def test_the_table_holds_only_registrations():
    """zoo_entries.json records what a recipe cannot know; the shipped digits models are registered."""
    raw = json.loads(zoo.TABLE_PATH.read_text())
    assert raw["schema_version"] == zoo.TABLE_SCHEMA_VERSION
    shipped = {d.name for d in (pathlib.Path(__file__).resolve().parents[1] / "saved_models").iterdir() if d.is_dir()}
    assert shipped and shipped <= set(DIGITS_ENTRIES)
    assert set(raw["entries"]) == shipped  # every shipped artifact registered, nothing registered unshipped
    for name, row in raw["entries"].items():
        assert set(row) <= set(zoo.REGISTRATION_KEYS), name
        assert re.fullmatch(r"[0-9a-f]{64}", row["manifest_sha256"]), name
        assert zoo.entries()[name]["manifest_sha256"] == row["manifest_sha256"]
    assert zoo.entries()["wrn40_4_cifar10_eps8"]["manifest_sha256"] is None  # nothing published


def test_unknown_name_lists_close_names(isolated):
    with pytest.raises(ValueError, match="wrn16_4_cifar10_eps8"):
        dp_zoo.load("wrn16_4_cifar10_eps9")
    with pytest.raises(ValueError, match="Did you mean"):
        dp_zoo.card("wrn_digit_eps8")


def test_unpublished_entry_gives_the_command(isolated):
    with pytest.raises(zoo.ArtifactNotPublishedError,
                       match=re.escape("python -m dp_zoo.train --recipe wrn40_4_cifar10_eps8")) as e:
        dp_zoo.load("wrn40_4_cifar10_eps8")
    assert "not published yet" in str(e.value) and "accelerator" in str(e.value)
    with pytest.raises(zoo.ArtifactNotPublishedError,
                       match=re.escape("python -m dp_zoo.train --recipe wrn_digits_eps2")):
        dp_zoo.card("wrn_digits_eps2")
    rows = {r["name"]: r for r in dp_zoo.list_models()}
    assert rows["wrn40_4_cifar10_eps8"]["available"] is False
    assert rows["wrn40_4_cifar10_eps8"]["accuracy"] is None  # ours: none measured
    assert rows["wrn40_4_cifar10_eps8"]["published_accuracy"] is None  # dp_zoo's own configuration
    assert rows["wrn_digits_eps2"]["command"] == "python -m dp_zoo.train --recipe wrn_digits_eps2"


def test_registered_artifact_loads_with_its_card(isolated, artifact):
    _, model, rec = artifact
    d = _copy(artifact, isolated["repo"])
    digest = zoo.register("wrn_digits_eps8", d)
    assert zoo.entries()["wrn_digits_eps8"]["manifest_sha256"] == digest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a registered artifact loads without a warning
        m = dp_zoo.load("wrn_digits_eps8")
    assert m.card["artifact"] == {"path": str(d), "registered": True, "manifest_sha256": digest,
                                  "published_weights_sha256": manifest.weights_sha256(model.get_weights())}
    assert m.card["privacy"] == rec["privacy"]
    # The loaded model takes pixels (as the card states) and normalises inside; the network took normalised ones.
    pixels = H.images(3)
    x = preprocessing.normalize(pixels, rec["data"]["mean"], rec["data"]["std"])
    np.testing.assert_allclose(np.asarray(m(pixels)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    assert dp_zoo.card("wrn_digits_eps8")["metrics"] == rec["metrics"]
    rows = {r["name"]: r for r in dp_zoo.list_models()}
    row = rows["wrn_digits_eps8"]
    assert row["available"] and row["status"] == "available"
    assert row["epsilon"] == rec["privacy"]["epsilon"]
    assert row["accuracy"] == rec["metrics"]["test_accuracy_ema"]
    text = zoo_cli.format_models()
    assert "wrn_digits_eps8" in text
    pts = listing.privacy_utility_points("digits")
    assert {"name": "wrn_digits_eps8", "epsilon": rec["privacy"]["epsilon"],
            "accuracy": rec["metrics"]["test_accuracy_ema"], "source": "measured"} in pts


def test_register_refuses_a_card_of_another_entry(isolated, artifact):
    d = _copy(artifact, isolated["tmp"], name="wrn_digits_eps4")
    with pytest.raises(ValueError, match="not 'wrn_digits_eps4'"):
        zoo.register("wrn_digits_eps4", d)
    with pytest.raises(ValueError, match="not a zoo entry"):
        zoo.register("no_such_entry", d)


def test_unregistered_local_artifact_loads_with_a_warning(isolated, artifact):
    _copy(artifact, isolated["cache"].parent / "dp_zoo")
    with pytest.warns(UserWarning, match="not the registered zoo artifact"):
        m = dp_zoo.load("wrn_digits_eps8")
    assert m.card["artifact"]["registered"] is False
    assert {r["name"]: r for r in dp_zoo.list_models()}["wrn_digits_eps8"]["status"] == "available (local, unregistered)"


def test_search_order_home_then_repo_then_cache(isolated, artifact):
    for base in ("cache", "repo", "home"):
        b = isolated[base] if base != "cache" else isolated["cache"]
        b.mkdir(parents=True, exist_ok=True)
        _copy(artifact, b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert dp_zoo.card("wrn_digits_eps8")["artifact"]["path"] == str(b / "wrn_digits_eps8")


def test_truncated_or_modified_files_are_refused_by_name(isolated, artifact):
    d = _copy(artifact, isolated["home"])
    zoo.register("wrn_digits_eps8", d)
    p = d / "model.keras"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated.*model\.keras"):
        dp_zoo.load("wrn_digits_eps8")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"Checksum mismatch for .*model\.keras"):
        dp_zoo.load("wrn_digits_eps8")
    p.write_bytes(data)
    dp_zoo.load("wrn_digits_eps8")
    # A self-consistent artifact whose manifest is not the registered one is refused.
    card = d / "card.json"
    card.write_text(card.read_text().replace('"wall_time_s": 12.345', '"wall_time_s": 1.0'))
    manifest.write(str(d), "wrn_digits_eps8")
    with pytest.raises(ValueError, match=r"Checksum mismatch for .*MANIFEST\.json"):
        dp_zoo.load("wrn_digits_eps8")
    row = {r["name"]: r for r in dp_zoo.list_models()}["wrn_digits_eps8"]
    assert row["available"] is False and "fails verification" in row["status"]


def test_remote_artifact_is_downloaded_once_and_verified(isolated, artifact):
    archive, sha = export.package(artifact[0], str(isolated["tmp"] / "dl" / "wrn_digits_eps8.tar.gz"))
    url = "file://" + archive
    d = _copy(artifact, isolated["tmp"] / "reg")
    zoo.register("wrn_digits_eps8", d, remote=url, archive_sha256="0" * 64)
    row = {r["name"]: r for r in dp_zoo.list_models()}["wrn_digits_eps8"]
    assert row["status"] == "downloadable"
    with pytest.raises(ValueError, match="Checksum mismatch for the download"):
        dp_zoo.load("wrn_digits_eps8")
    assert not (isolated["cache"] / "wrn_digits_eps8").exists()
    assert os.listdir(isolated["cache"]) == []  # no partial download left behind
    zoo.register("wrn_digits_eps8", d, remote=url, archive_sha256=sha)
    m = dp_zoo.load("wrn_digits_eps8")
    assert m.card["artifact"]["registered"] is True
    assert m.card["artifact"]["path"] == str(isolated["cache"] / "wrn_digits_eps8")
    os.remove(archive)  # the second load must not need the network
    assert dp_zoo.load("wrn_digits_eps8").card["artifact"]["path"] == str(isolated["cache"] / "wrn_digits_eps8")


def test_load_by_path(artifact):
    path, _, rec = artifact
    m = dp_zoo.load(path)
    assert m.card["name"] == "wrn_digits_eps8" and m.card["privacy"]["epsilon"] == rec["privacy"]["epsilon"]


def test_table_file_is_the_data(isolated, artifact):
    """What the zoo says about registrations is read from the table file, nothing else.

    Edits to the (private copy of the) file show up in the API at once; a row
    for an entry without a recipe, a row recording a recipe's facts, and a file
    of another schema version are refused by name.
    """
    d = _copy(artifact, isolated["home"])
    raw = {"schema_version": zoo.TABLE_SCHEMA_VERSION,
           "entries": {"wrn_digits_eps8": {"manifest_sha256": manifest.sha256_file(d / "MANIFEST.json")},
                       "wrn_digits_eps2": {"manifest_sha256": "0" * 64, "remote": "file:///nowhere.tar.gz"}}}
    zoo.TABLE_PATH.write_text(json.dumps(raw))
    rows = {r["name"]: r for r in dp_zoo.list_models()}
    assert rows["wrn_digits_eps8"]["status"] == "available" and rows["wrn_digits_eps2"]["status"] == "downloadable"
    assert dp_zoo.card("wrn_digits_eps8")["artifact"]["registered"] is True
    raw["entries"]["wrn_digits_eps8"]["manifest_sha256"] = "f" * 64
    zoo.TABLE_PATH.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"Checksum mismatch for .*MANIFEST\.json: the zoo table expects ffff"):
        dp_zoo.card("wrn_digits_eps8")
    for bad, message in (({"no_such_recipe": {"manifest_sha256": None}}, r"registers \['no_such_recipe'\], which have no recipe"),
                         ({"wrn_digits_eps8": {"target_epsilon": 3.0}}, r"'wrn_digits_eps8' records \['target_epsilon'\]")):
        zoo.TABLE_PATH.write_text(json.dumps({"schema_version": zoo.TABLE_SCHEMA_VERSION, "entries": bad}))
        with pytest.raises(ValueError, match=message):
            dp_zoo.list_models()
    raw["schema_version"] = zoo.TABLE_SCHEMA_VERSION + 1
    zoo.TABLE_PATH.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"has schema {zoo.TABLE_SCHEMA_VERSION + 1}, expected"):
        dp_zoo.list_models()


def test_a_same_named_directory_in_cwd_does_not_bypass_the_table(isolated, artifact, monkeypatch):
    d = _copy(artifact, isolated["home"])
    zoo.register("wrn_digits_eps8", d)
    stray = isolated["tmp"] / "cwd"
    _copy(artifact, stray)
    # Another self-consistent artifact: its record edited, its card rebuilt from it.
    from dp_zoo.cards.model_card import ModelCard

    rec = json.loads((stray / "wrn_digits_eps8" / "run_record.json").read_text())
    rec["operational"]["wall_time_s"] = 2.0
    (stray / "wrn_digits_eps8" / "run_record.json").write_text(json.dumps(rec))
    (stray / "wrn_digits_eps8" / "card.json").write_text(
        json.dumps(ModelCard.from_run_record("wrn_digits_eps8", rec).to_json()))
    manifest.write(str(stray / "wrn_digits_eps8"))
    monkeypatch.chdir(stray)
    assert dp_zoo.card("wrn_digits_eps8")["artifact"]["path"] == str(d)
    assert dp_zoo.card("./wrn_digits_eps8")["operational"]["wall_time_s"] == 2.0  # an explicit path is a path


def test_listing_the_zoo_does_not_load_tensorflow():
    """The table, the recipes and the local cards and checksums need no TensorFlow (a fresh process)."""
    code = ("import sys, dp_zoo, dp_zoo.zoo; rows = dp_zoo.list_models(); assert rows; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


def test_register_command_records_only_the_checksum(isolated, artifact, capsys):
    """``python -m dp_zoo.zoo register ENTRY DIR`` (its main): the table gains the artifact's checksum
    and nothing else; bad entries and artifacts are refused in one line."""
    d = _copy(artifact, isolated["tmp"] / "art")
    assert zoo_cli.main(["register", "wrn_digits_eps8", str(d)]) == 0
    digest = manifest.sha256_file(d / "MANIFEST.json")
    assert f"registered: wrn_digits_eps8 -> {digest}" in capsys.readouterr().out
    raw = json.loads(zoo.TABLE_PATH.read_text())
    assert raw == {"schema_version": zoo.TABLE_SCHEMA_VERSION, "entries": {"wrn_digits_eps8": {"manifest_sha256": digest}}}
    assert zoo.entries()["wrn_digits_eps8"]["manifest_sha256"] == digest
    assert zoo_cli.main(["register", "wrn_digits_eps8", str(d), "--remote", "file:///a.tar.gz",
                     "--archive-sha256", "a" * 64]) == 0
    assert json.loads(zoo.TABLE_PATH.read_text())["entries"]["wrn_digits_eps8"] == {
        "manifest_sha256": digest, "remote": "file:///a.tar.gz", "archive_sha256": "a" * 64}
    capsys.readouterr()
    for argv, message in ((["register", "wrn_digits_eps4", str(d)], "not 'wrn_digits_eps4'"),
                          (["register", "wrn_digits_eps8", str(isolated["tmp"])], "has no MANIFEST.json")):
        assert zoo_cli.main(argv) == 1  # what the command names exists, but is not a good artifact
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dp_zoo.zoo: error:") and message in err[0], err
    # A name or path on the command line that does not exist is a usage error: exit 2, as argparse's.
    for argv, message in ((["register", "no_such_entry", str(d)], "Unknown zoo entry 'no_such_entry'"),
                          (["register", "wrn_digits_eps8", str(isolated["tmp"] / "nowhere")], "no such directory")):
        with pytest.raises(SystemExit) as e:
            zoo_cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit) as e:
        zoo_cli.main(["register", "wrn_digits_eps8"])
    assert e.value.code == 2
    assert zoo_cli.main([]) == 0 and "wrn_digits_eps8" in capsys.readouterr().out


def test_the_table_shows_whose_configuration_and_the_accountants_epsilon():
    """Each line says De2022 / TAN2023 / own, and RDP/PLD; an eps differing from the source's is footnoted."""
    from dp_zoo.recipes import epsilons as recipe_epsilons

    lines = {ln.split()[0]: ln for ln in zoo_cli.format_models().splitlines() if ln.split()}
    available = {r["name"] for r in dp_zoo.list_models() if r["available"]}  # their own cards' (test_shipped_models)
    eps = recipe_epsilons.load()

    def up(x):  # rounded up to 3 decimals, never down
        return f"{math.ceil(x * 1000 - 1e-9) / 1000:.3f}"

    for name, r in recipes.RECIPES.items():
        cols = lines[name].split()
        assert cols[2] == r.provenance_label, name
        if r.config.dp.enabled and name not in available:
            rdp_pld = cols[4].split("[")[0]
            assert rdp_pld == f"{up(eps[name]['rdp'])}/{up(eps[name]['pld'])}", name
            if eps[name]["note"]:
                footnote = cols[4].split("[")[1].rstrip("]")
                assert f"  [{footnote}] {name}: {eps[name]['note']}" in lines[f"[{footnote}]"], name
    assert lines["wrn16_4_cifar10_eps8"].split()[2] == "TAN2023" and "[" in lines["wrn16_4_cifar10_eps8"]


def test_list_models_filters_names_like_timm():
    every = sorted(zoo.entries())
    assert [r["name"] for r in dp_zoo.list_models()] == every
    assert [r["name"] for r in dp_zoo.list_models("wrn_digits*")] == [n for n in every if n.startswith("wrn_digits")]
    assert [r["name"] for r in dp_zoo.list_models("*eps8")] == [n for n in every if n.endswith("eps8")]
    assert [r["name"] for r in dp_zoo.list_models("cifar100")] == [n for n in every if "cifar100" in n]
    assert dp_zoo.list_models("no_such_model*") == []


def test_load_refuses_weights_other_than_those_the_run_record_publishes(isolated, artifact):
    """A self-consistent artifact (its manifest rewritten) whose model.keras is another model's."""
    d = _copy(artifact, isolated["tmp"] / "swapped")
    H.tiny_model(seed=1).save(d / "model.keras")
    manifest.write(str(d), "wrn_digits_eps8")
    with pytest.raises(ValueError, match="does not hold the weights its run record publishes") as e:
        dp_zoo.load(str(d))
    assert "\n" not in str(e.value)


def test_an_artifact_whose_record_predates_the_weights_digest_loads_on_its_manifest(isolated, artifact):
    """Records from before published_weights_sha256 (the shipped wrn_digits_nonprivate's): the digest check
    is skipped, and the card says it was not made; the manifest still checks every file."""
    d = _copy(artifact, isolated["tmp"] / "old")
    rec = json.loads((d / "run_record.json").read_text())
    del rec["published_weights_sha256"]
    (d / "run_record.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="run_record.json"):
        dp_zoo.load(str(d))  # the manifest still lists the old bytes
    from dp_zoo.cards.model_card import record_sha256

    card = json.loads((d / "card.json").read_text())  # an old artifact's card names its own record
    card["run_record_sha256"] = record_sha256(rec)
    (d / "card.json").write_text(json.dumps(card))
    manifest.write(str(d), "wrn_digits_eps8")
    m = dp_zoo.load(str(d))
    assert m.card["artifact"]["published_weights_sha256"] is None
