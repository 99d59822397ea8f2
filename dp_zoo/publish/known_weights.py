"""Which published zoo artifact a weight file is a copy of (``--init`` provenance, docs/privacy.md).

A ``.keras`` file given to ``--init`` without a card beside it is the user's
declaration that it saw only public data, unless dp_zoo published those
weights itself: then it keeps that artifact's provenance. Two sources know
what dp_zoo published:

- the artifacts on this machine (``zoo.search_path()``: ``$DP_ZOO_HOME``,
  the repository's ``saved_models/``, the user cache): each MANIFEST.json
  lists the SHA-256 of its ``model.keras`` and of the card that describes it;
- ``dp_zoo/publish/known_weights.json``: every ``model.keras`` the repository has
  shipped, withdrawn ones included, with the facts of its card that
  ``init_privacy`` reads (``trimmed_card``; never a tuning's trial count).
  ``python -m dp_zoo.train.known_weights <artifact dir> --shipped ...`` adds one.

A file matches by its bytes (SHA-256), or by its weights:
``weights_fingerprint`` hashes the multiset of its floating-point weight
arrays (dtype, shape and bytes of each; layer names, order and the optimizer
left out), so a copy that was loaded and saved again is recognised too.
Weights that were changed (fine-tuned, a classifier replaced) are not.
"""

import collections
import hashlib
import json
import os
import pathlib
import sys
import zipfile

from dp_zoo import cli
from dp_zoo.publish import manifest

KNOWN_PATH = pathlib.Path(__file__).with_name("known_weights.json")
KNOWN_SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.weights.h5"  # inside a .keras archive (Keras 3)

Match = collections.namedtuple("Match", ["card", "how", "where"])
Match.__doc__ = """A weight file dp_zoo published: its card (a dict), "bytes" or "weights", and where it was found."""


def _float_arrays(path):
    """``[(dtype, shape, h5py dataset)]`` of a .keras file's weights (no optimizer), in an open file; or None."""
    import h5py

    try:
        # Read through the archive member, not into memory: the shapes alone decide most comparisons.
        f = h5py.File(zipfile.ZipFile(path).open(WEIGHTS_FILE), "r")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and not name.startswith("optimizer/"):
            found.append((obj.dtype.str, tuple(obj.shape), obj))

    f.visititems(visit)
    return found


def _signature(arrays):
    return sorted((d, s) for d, s, _ in arrays)


def _fingerprint(arrays):
    digests = sorted(hashlib.sha256(f"{d}|{s}|".encode() + ds[()].tobytes()).hexdigest() for d, s, ds in arrays)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def weights_fingerprint(path):
    """The SHA-256 of a .keras file's weight arrays as a multiset (see the module doc); None if unreadable."""
    arrays = _float_arrays(path)
    return None if arrays is None else _fingerprint(arrays)


def trimmed_card(card, withdrawn=None):
    """What ``known_weights.json`` keeps of a card: the facts ``init_privacy`` reads, nothing else."""
    p = card.get("privacy") or {}
    keep = ("private", "epsilon", "delta", "noise_multiplier", "sampling_probability", "steps", "prior_runs",
            "not_private")
    privacy = {k: p.get(k) for k in keep}
    # Whether a search chose it, and its total; nothing else of the tuning (the trial count is secret).
    privacy["tuning"] = {"total_epsilon": p["tuning"]["total_epsilon"]} if p.get("tuning") else None
    return {"name": card.get("name"), "data": {"dataset": (card.get("data") or {}).get("dataset")},
            "privacy": privacy, "model": {"init": (card.get("model") or {}).get("init")}, "withdrawn": withdrawn}


def known():
    """The rows of ``known_weights.json``: ``model_sha256``, ``weights_fingerprint``, ``shipped``, ``card``."""
    with open(KNOWN_PATH) as f:
        table = json.load(f)
    if table.get("schema_version") != KNOWN_SCHEMA_VERSION:
        raise ValueError(f"{KNOWN_PATH} has schema {table.get('schema_version')!r}, expected {KNOWN_SCHEMA_VERSION}.")
    return table["artifacts"]


def _local_artifacts():
    """``(directory, listed files)`` of every exported artifact on the zoo's search path."""
    from dp_zoo.publish import zoo

    for base in zoo.search_path():
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if (d / manifest.FILENAME).is_file() and (d / "model.keras").is_file() and (d / "card.json").is_file():
                try:
                    yield d, manifest.listed_files(str(d))
                except (ValueError, OSError):
                    continue


def _local_card(d, listed):
    """The card of artifact ``d`` if it is the one its manifest lists (the card of those weights), else None."""
    if (listed.get("card.json") or {}).get("sha256") != manifest.sha256_file(d / "card.json"):
        return None
    with open(d / "card.json") as f:
        return json.load(f)


def _by_weights(path, local):
    arrays = _float_arrays(path)
    if not arrays:
        return None
    mine, signature = _fingerprint(arrays), _signature(arrays)
    for d, listed in local:
        theirs = _float_arrays(d / "model.keras")
        # The shapes first: only an artifact of the same architecture and head is hashed.
        if theirs and _signature(theirs) == signature and _fingerprint(theirs) == mine:
            card = _local_card(d, listed)
            if card is not None:
                return Match(card, "weights", str(d))
    for row in known():
        if row["weights_fingerprint"] == mine:
            return Match(row["card"], "weights", f"{KNOWN_PATH.name} ({row['shipped']})")
    return None


def match(path):
    """The ``Match`` of the weight file ``path`` if dp_zoo published it (bytes or weights), else None."""
    sha = manifest.sha256_file(path)
    local = list(_local_artifacts())
    for d, listed in local:
        if (listed.get("model.keras") or {}).get("sha256") == sha:
            card = _local_card(d, listed)
            if card is not None:
                return Match(card, "bytes", str(d))
    for row in known():
        if row["model_sha256"] == sha:
            return Match(row["card"], "bytes", f"{KNOWN_PATH.name} ({row['shipped']})")
    return _by_weights(path, local)


def row_for(directory, shipped, withdrawn=None):
    """The ``known_weights.json`` row of the exported artifact at ``directory``."""
    d = pathlib.Path(directory)
    with open(d / "card.json") as f:
        card = json.load(f)
    fingerprint = weights_fingerprint(d / "model.keras")
    if fingerprint is None:
        raise ValueError(f"{d / 'model.keras'}: not a .keras archive with {WEIGHTS_FILE}.")
    return {"model_sha256": manifest.sha256_file(d / "model.keras"), "weights_fingerprint": fingerprint,
            "shipped": shipped, "card": trimmed_card(card, withdrawn)}


def add(directories, shipped, withdrawn=None):
    """Adds (or replaces, by model SHA-256) the rows of ``directories`` in ``known_weights.json``."""
    rows = {r["model_sha256"]: r for r in known()} if KNOWN_PATH.exists() else {}
    for d in directories:
        row = row_for(d, shipped, withdrawn)
        rows[row["model_sha256"]] = row
    table = {"schema_version": KNOWN_SCHEMA_VERSION,
             "artifacts": sorted(rows.values(), key=lambda r: (r["shipped"], r["card"]["name"] or ""))}
    KNOWN_PATH.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def main(argv=None):
    """``python -m dp_zoo.train.known_weights DIR... --shipped LABEL [--withdrawn REASON]``."""
    p = cli.Parser("dp_zoo.train.known_weights",
                   description="Record published model.keras files, so that copies of them keep their provenance.")
    p.add_argument("directories", nargs="+", help="exported artifact directories (model.keras, card.json)")
    p.option("shipped", required=True, help="when and where it was shipped, e.g. '2026-12-04 6a28ba0'")
    p.option("withdrawn", default=None, help="why it was withdrawn (its card's epsilon does not hold)")
    args = p.parse_args(argv)
    add(args.directories, args.shipped, args.withdrawn)
    print(f"{KNOWN_PATH}: {len(known())} artifacts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
