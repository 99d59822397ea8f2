"""The zoo: ``load``, ``list_models``, ``card``.

Entries are data, one row each in ``zoo_entries.json``: name -> architecture,
dataset, recipe, privacy budget (target epsilon, delta), the paper's
published accuracy (labelled as the paper's, never as ours), and the
artifact: the SHA-256 of its MANIFEST.json (filled by
``python -m dp_zoo.export --artifact DIR --register``) and an optional remote
location (``https://...`` / ``file://...`` ``.tar.gz`` with its
``archive_sha256``, or ``kaggle:<owner>/<model>/<framework>/<variation>``).

``load(name)`` looks for ``<name>/`` in, in order: ``$DP_ZOO_HOME``, the
repository's ``saved_models/``, the user cache (``$XDG_CACHE_HOME/dp_zoo``
or ``~/.cache/dp_zoo``), then downloads the remote artifact once into the
cache. Every artifact is verified file by file against its MANIFEST.json,
and the manifest against the table's SHA-256 when the table has one, before
anything is loaded. An artifact the table has no checksum for (a model you
trained yourself with ``python -m dp_zoo.train``) loads with a warning and
``model.card["artifact"]["registered"] = False``.

``python -m dp_zoo.zoo`` prints the table.
"""

import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings

from dp_zoo.export import MANIFEST, sha256_file, verify_manifest

TABLE_PATH = pathlib.Path(__file__).with_name("zoo_entries.json")
_TABLE_PATH = TABLE_PATH  # older name
REPO_SAVED_MODELS = pathlib.Path(__file__).resolve().parent.parent / "saved_models"
TABLE_SCHEMA_VERSION = 1


class ArtifactNotPublishedError(LookupError):
    """A known entry whose weights are not available anywhere yet."""


def entries():
    """The zoo table: ``{name: entry dict}``."""
    with open(TABLE_PATH) as f:
        table = json.load(f)
    if table.get("schema_version") != TABLE_SCHEMA_VERSION:
        raise ValueError(f"{TABLE_PATH} has schema {table.get('schema_version')!r}, expected {TABLE_SCHEMA_VERSION}.")
    return table["entries"]


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


def _check_against_table(directory, entry, name):
    """Verifies the files, then the manifest against the table; returns 'registered'."""
    got = verify_manifest(str(directory))
    want = entry.get("manifest_sha256")
    if want and got != want:
        raise ValueError(
            f"Checksum mismatch for {directory}/{MANIFEST}: the zoo table expects {want[:16]}..., "
            f"found {got[:16]}.... This is not the published {name!r}; refusing to load it. "
            "Remove the directory to re-download, or re-export and re-register the model."
        )
    return bool(want)


def _not_published(name, entry):
    cmd = f"python -m dp_zoo.train --recipe {entry['recipe']}"
    where = ", ".join(str(d) for d in search_path())
    note = "  # needs an accelerator (GPU/TPU) and the data set" if entry.get("needs_accelerator") else ""
    return ArtifactNotPublishedError(
        f"The weights of zoo entry {name!r} are not published yet (searched {where}; no remote). "
        f"Produce them with:\n    {cmd}{note}\n"
        f"which publishes into $DP_ZOO_HOME/{name} (or the user cache), where dp_zoo.load({name!r}) finds them."
    )


def locate(name):
    """The verified local directory of ``name`` (downloading it if needed).

    Args:
      name: a zoo entry, or the path of an exported artifact directory.

    Returns:
      (directory, registered): ``registered`` is True when the manifest
      matched the zoo table's checksum.
    """
    # A zoo entry name wins over a same-named directory in the working
    # directory, so a stray ./<entry>/ never bypasses the table's checksum.
    if str(name) not in entries() and (os.sep in str(name) or os.path.isdir(str(name))):
        d = pathlib.Path(name)
        if not d.is_dir():
            raise FileNotFoundError(f"no artifact directory at {d}")
        verify_manifest(str(d))
        return d, False
    entry = _entry(name)
    for base in search_path():
        candidate = base / name
        if candidate.is_dir():
            return candidate, _check_against_table(candidate, entry, name)
    if entry.get("remote"):
        d = _download(name, entry)
        return d, _check_against_table(d, entry, name)
    raise _not_published(name, entry)


def _download(name, entry):
    """Fetches the entry's remote artifact into the cache, once, verified."""
    dest = cache_dir() / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    remote = entry["remote"]
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent)
    try:
        if remote.startswith("kaggle:"):
            try:
                import kagglehub
            except ImportError as e:
                raise ImportError(f"{name!r} is hosted on Kaggle Models; pip install kagglehub") from e
            src = kagglehub.model_download(remote[len("kaggle:"):])
            root = os.path.join(tmp, name)
            shutil.copytree(src, root)
        else:
            archive = os.path.join(tmp, "artifact.tar.gz")
            with urllib.request.urlopen(remote, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
            want = entry.get("archive_sha256")
            got = sha256_file(archive)
            if want and got != want:
                raise ValueError(
                    f"Checksum mismatch for the download of {name!r} from {remote}: expected "
                    f"{want[:16]}..., got {got[:16]}... (truncated or tampered). Nothing was installed."
                )
            with tarfile.open(archive) as t:
                # filter="data" refuses absolute paths, links out of the tree, devices.
                t.extractall(os.path.join(tmp, "x"), filter="data")
            root = os.path.join(tmp, "x", name)
            if not os.path.isdir(root):
                raise ValueError(f"the archive at {remote} does not contain {name}/")
        _check_against_table(root, entry, name)
        try:
            os.replace(root, dest)
        except OSError:
            if not dest.is_dir():  # someone else won a race: keep theirs if it exists
                raise
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_card(directory, registered):
    with open(pathlib.Path(directory) / "card.json") as f:
        c = json.load(f)
    c["artifact"] = {"path": str(directory), "registered": registered,
                     "manifest_sha256": sha256_file(pathlib.Path(directory) / MANIFEST)}
    return c


def card(name):
    """The card (``card.json`` as a dict, plus ``"artifact"``) of a published entry.

    Raises:
      ValueError: unknown name or failed verification.
      ArtifactNotPublishedError: the entry has no weights yet.
    """
    return _read_card(*locate(name))


def load(name):
    """Loads a published private model with its card attached.

    Args:
      name: zoo entry, e.g. ``"wrn_digits_eps8"`` (see ``list_models()``),
        or the path of an exported artifact directory.

    Returns:
      A ``keras.Model`` whose input is the normalized image (the SavedModel
      under ``saved_model/1`` takes uint8 images directly; mean/std are in
      ``model.card["data"]``), with ``model.card`` (the card.json dict).

    Raises:
      ValueError: unknown name (lists close names), or a missing, truncated
        or modified file (named in the message).
      ArtifactNotPublishedError: a known entry without weights; the message
        gives the command that produces them.
    """
    import keras

    import dp_zoo.models  # noqa: F401  registers custom layers

    directory, registered = locate(name)
    if not registered and str(name) in entries():
        warnings.warn(
            f"{directory} is not the registered zoo artifact of {name!r} (the table has no checksum "
            "for it); its files match its own manifest. Loading it as a local model.",
            stacklevel=2,
        )
    model = keras.models.load_model(directory / "model.keras")
    # Plain attribute: Keras would otherwise wrap the dict as tracked state.
    object.__setattr__(model, "card", _read_card(directory, registered))
    return model


def _find_local(name):
    for base in search_path():
        if (base / name).is_dir():
            return base / name
    return None


def list_models():
    """Entries with epsilon, dataset, accuracy and local availability.

    Returns:
      list of dicts: name, architecture, dataset, private, target_epsilon,
      delta, published_accuracy (the paper's, %), epsilon and accuracy
      (measured here, from the card, if the weights are available),
      available (bool), status, command (the recipe's training command).
    """
    out = []
    for name, e in sorted(entries().items()):
        row = {
            "name": name, "architecture": e["architecture"], "dataset": e["dataset"],
            "private": e["private"], "target_epsilon": e["target_epsilon"], "delta": e["delta"],
            "published_accuracy": e.get("published_accuracy"), "epsilon": None, "accuracy": None,
            "available": False, "command": f"python -m dp_zoo.train --recipe {e['recipe']}",
        }
        local = _find_local(name)
        status = "recipe only" + (" (needs an accelerator)" if e.get("needs_accelerator") else "")
        if local is not None:
            try:
                c = card(name)
            except (ValueError, OSError) as err:
                status = f"local copy fails verification: {str(err).splitlines()[0]}"
            else:
                row["available"] = True
                row["epsilon"] = c["privacy"]["epsilon"]
                m = c.get("metrics") or {}
                row["accuracy"] = m.get("test_accuracy_ema") if m.get("test_accuracy_ema") is not None \
                    else m.get("test_accuracy_last")
                status = "available" + ("" if c["artifact"]["registered"] else " (local, unregistered)")
        elif e.get("remote"):
            status = "downloadable"
        row["status"] = status
        out.append(row)
    return out


def privacy_utility_points(dataset, exclude=None):
    """Points for a privacy-utility plot: measured local cards and the paper's figures.

    Returns:
      list of dicts {name, epsilon, accuracy, source}; accuracy as a
      fraction; source "measured" or "paper".
    """
    pts = []
    for row in list_models():
        if row["dataset"] != dataset or row["name"] == exclude:
            continue
        if row["available"] and row["accuracy"] is not None:
            pts.append({"name": row["name"], "epsilon": row["epsilon"], "accuracy": row["accuracy"],
                        "source": "measured"})
        elif row["published_accuracy"] is not None:
            pts.append({"name": row["name"], "epsilon": row["target_epsilon"],
                        "accuracy": row["published_accuracy"] / 100.0, "source": "paper"})
    return pts


def register(name, directory, *, remote=None, archive_sha256=None):
    """Writes an artifact's MANIFEST.json SHA-256 (and remote) into the zoo table.

    Returns:
      the recorded SHA-256.
    """
    with open(TABLE_PATH) as f:
        table = json.load(f)
    if name not in table["entries"]:
        raise ValueError(f"{name!r} is not a zoo entry; add its row to {TABLE_PATH} first.")
    digest = verify_manifest(str(directory))
    with open(os.path.join(directory, "card.json")) as f:
        c = json.load(f)
    if c.get("name") != name:
        raise ValueError(f"{directory} holds the card of {c.get('name')!r}, not {name!r}.")
    row = table["entries"][name]
    row["manifest_sha256"] = digest
    if remote is not None:
        row["remote"] = remote
        row["archive_sha256"] = archive_sha256
    tmp = str(TABLE_PATH) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, TABLE_PATH)
    return digest


def format_models(rows=None):
    """The ``list_models()`` table as text."""
    rows = list_models() if rows is None else rows
    head = f"{'name':38s} {'dataset':12s} {'eps':>6s} {'acc (ours)':>10s} {'acc (paper)':>11s}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        eps = r["epsilon"] if r["epsilon"] is not None else r["target_epsilon"]
        eps_s = "-" if eps is None else f"{eps:.3g}"
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        pub = "-" if r["published_accuracy"] is None else f"{r['published_accuracy']:.1f}%"
        lines.append(f"{r['name']:38s} {r['dataset']:12s} {eps_s:>6s} {acc:>10s} {pub:>11s}  {r['status']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_models())
    sys.exit(0)
