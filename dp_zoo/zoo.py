"""The zoo: ``load``, ``list_models``, ``card``.

Entries are data (``zoo_entries.json``): name -> architecture, dataset,
recipe, privacy budget, published accuracy (the paper's, labelled as such),
the SHA-256 of the artifact's MANIFEST.json, and an optional remote location.

``load(name)`` looks for ``<name>/`` in, in order: ``$DP_ZOO_HOME``, the
repository's ``saved_models/``, the user cache (``$XDG_CACHE_HOME/dp_zoo``
or ``~/.cache/dp_zoo``), then downloads the entry's remote archive once into
the cache. Every artifact is verified file by file against its MANIFEST.json,
and the manifest against the table's SHA-256, before anything is loaded.
"""

import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.request

from dp_zoo.export import sha256_file, verify_manifest

_TABLE_PATH = pathlib.Path(__file__).with_name("zoo_entries.json")
REPO_SAVED_MODELS = pathlib.Path(__file__).resolve().parent.parent / "saved_models"


class ArtifactNotPublishedError(LookupError):
    """A known entry whose weights are not available anywhere yet."""


def entries():
    """The zoo table: ``{name: entry dict}``."""
    with open(_TABLE_PATH) as f:
        return json.load(f)["entries"]


def _entry(name):
    table = entries()
    if name not in table:
        from dp_zoo.models._registry import unknown_name_message

        raise ValueError(unknown_name_message("zoo entry", name, sorted(table)) + " See dp_zoo.list_models().")
    return table[name]


def cache_dir():
    """The user cache directory for downloaded artifacts."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "dp_zoo"


def search_path():
    """Directories searched for ``<entry>/``, in order."""
    dirs = []
    if os.environ.get("DP_ZOO_HOME"):
        dirs.append(pathlib.Path(os.environ["DP_ZOO_HOME"]))
    dirs += [REPO_SAVED_MODELS, cache_dir()]
    return dirs


def _verify(directory, entry, name):
    verify_manifest(str(directory))
    want = entry.get("manifest_sha256")
    got = sha256_file(os.path.join(directory, "MANIFEST.json"))
    if want and got != want:
        raise ValueError(
            f"Checksum mismatch for {directory}/MANIFEST.json: the zoo table expects {want[:12]}…, "
            f"found {got[:12]}…. This is not the published {name!r}; refusing to load it. "
            "Remove the directory to re-download, or re-export the model."
        )


def locate(name):
    """The verified local directory of entry ``name`` (downloading it if needed).

    ``name`` may also be the path of an exported artifact directory (e.g. one
    that ``python -m dp_zoo.train`` published); it is verified against its
    own MANIFEST.json.
    """
    if os.sep in str(name) and os.path.isdir(name):
        verify_manifest(str(name))
        return pathlib.Path(name)
    entry = _entry(name)
    for d in search_path():
        candidate = d / name
        if (candidate / "MANIFEST.json").exists() or (candidate / "card.json").exists():
            _verify(candidate, entry, name)
            return candidate
    if entry.get("remote"):
        return _download(name, entry)
    raise ArtifactNotPublishedError(
        f"The weights of {name!r} are not published yet (searched: "
        f"{', '.join(str(d) for d in search_path())}). Produce them with:\n"
        f"    python -m dp_zoo.train --recipe {entry['recipe']}"
        + ("   # needs an accelerator" if entry.get("needs_accelerator") else "")
    )


def _download(name, entry):
    """Downloads ``entry['remote']`` (a .tar.gz URL) into the cache once."""
    dest = cache_dir() / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent)
    try:
        archive = os.path.join(tmp, "a.tar.gz")
        urllib.request.urlretrieve(entry["remote"], archive)
        with tarfile.open(archive) as tf_:
            tf_.extractall(os.path.join(tmp, "x"), filter="data")
        root = os.path.join(tmp, "x", name)
        _verify(root, entry, name)
        os.replace(root, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def card(name):
    """The card (``card.json`` as a dict) of a published entry."""
    with open(locate(name) / "card.json") as f:
        return json.load(f)


def load(name):
    """Loads a published private model with its card attached.

    Args:
      name: zoo entry, e.g. ``"wrn_digits_eps8"`` (see ``list_models()``),
        or the path of an exported artifact directory.

    Returns:
      A ``keras.Model`` whose input is the normalized image (see
      ``model.card['data']`` for mean/std; the SavedModel under
      ``saved_model/1`` takes uint8 images directly) with ``model.card``.

    Raises:
      ValueError: unknown name (lists close names) or a failed checksum.
      ArtifactNotPublishedError: a known entry without weights (gives the
        command that produces them).
    """
    import keras

    import dp_zoo.models  # noqa: F401  registers custom layers

    directory = locate(name)
    model = keras.models.load_model(directory / "model.keras")
    with open(directory / "card.json") as f:
        model.card = json.load(f)
    return model


def list_models():
    """Entries with epsilon, dataset, accuracy and local availability.

    Returns:
      list of dicts: name, dataset, architecture, epsilon (measured, from the
      card, if available; else the recipe's target), delta, accuracy
      (measured here, if published locally), published_accuracy (the paper's),
      available (bool), status.
    """
    out = []
    for name, e in sorted(entries().items()):
        row = {
            "name": name, "dataset": e["dataset"], "architecture": e["architecture"],
            "target_epsilon": e["target_epsilon"], "delta": e["delta"], "private": e["private"],
            "published_accuracy": e["published_accuracy"], "epsilon": None, "accuracy": None,
            "available": False,
        }
        try:
            d = locate(name) if (e.get("manifest_sha256") or _local_dir(name)) else None
        except (ArtifactNotPublishedError, ValueError):
            d = None
        if d is not None:
            with open(d / "card.json") as f:
                c = json.load(f)
            row["available"] = True
            row["epsilon"] = c["privacy"]["epsilon"]
            m = c.get("metrics") or {}
            row["accuracy"] = m.get("test_accuracy_ema") or m.get("test_accuracy_last")
        row["status"] = "published here" if row["available"] else (
            "recipe only (needs an accelerator)" if e.get("needs_accelerator") else "recipe only")
        out.append(row)
    return out


def _local_dir(name):
    return any((d / name / "card.json").exists() for d in search_path())


def register(name, directory):
    """Writes the artifact's MANIFEST.json SHA-256 into the zoo table."""
    with open(_TABLE_PATH) as f:
        table = json.load(f)
    if name not in table["entries"]:
        raise ValueError(f"{name!r} is not a zoo entry; add it to zoo_entries.json first.")
    verify_manifest(str(directory))
    table["entries"][name]["manifest_sha256"] = sha256_file(os.path.join(directory, "MANIFEST.json"))
    tmp = str(_TABLE_PATH) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
    os.replace(tmp, _TABLE_PATH)
    return table["entries"][name]["manifest_sha256"]
