"""An artifact's MANIFEST.json: the SHA-256 and size of every file, written and verified.

Export writes the manifest last; the zoo verifies every file against it, and
the manifest itself against the zoo table's SHA-256, before anything is
loaded. Only the standard library is used for files, so that listing and checking
artifacts never needs TensorFlow; ``weights_sha256`` (the digest of a model's
weights that a run record binds to its published model) needs numpy.
"""

import hashlib
import json
import os

FILENAME = "MANIFEST.json"
VERSION = 1


def sha256_file(path):
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WEIGHTS_DIGEST_PREFIX = b"dp_zoo weights sha256 v1\n"


def weights_sha256(arrays):
    """Hex SHA-256 of a model's weights: ``arrays`` in order (for a Keras model, ``model.get_weights()``).

    The digest is over the prefix ``WEIGHTS_DIGEST_PREFIX`` and then, for
    each array in the given order, the line ``"<dtype> <shape>\\n"`` (numpy's
    little-endian ``dtype.str``, e.g. ``<f4``, and the shape as a list, e.g.
    ``[3, 3, 1, 16]``) followed by its values as C-order little-endian bytes.
    ``model.get_weights()`` lists every weight variable of the model
    (trainable and not, no optimizer state or random seeds) in Keras' order
    of ``model.weights``: the layers in build order, each layer's variables
    in creation order, which ``keras.models.load_model`` restores, so the
    digest recomputed from a loaded ``model.keras`` equals the one taken
    before it was saved (``dp_zoo.export`` checks that on every export).
    """
    import numpy as np

    h = hashlib.sha256(WEIGHTS_DIGEST_PREFIX)
    for a in arrays:
        a = np.asarray(a)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"{a.dtype.str} {list(a.shape)}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write(directory, entry_name=None):
    """Writes MANIFEST.json (sha256 + size of every other file) and returns its sha256."""
    files = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, directory).replace(os.sep, "/")
            if rel == FILENAME:
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": os.path.getsize(p)}
    path = os.path.join(directory, FILENAME)
    with open(path, "w") as f:
        json.dump({"manifest_version": VERSION, "entry": entry_name,
                   "files": dict(sorted(files.items()))}, f, indent=2)
    return sha256_file(path)


def listed_files(directory):
    """``{relative path: {"sha256", "bytes"}}`` as the manifest lists them (not verified).

    Raises:
      ValueError: no manifest, or a corrupt one.
    """
    path = os.path.join(directory, FILENAME)
    if not os.path.exists(path):
        raise ValueError(f"{directory} has no {FILENAME}; it is not a dp_zoo artifact. Re-export it with dp_zoo.export.")
    try:
        with open(path) as f:
            return json.load(f)["files"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path} is corrupt or truncated ({e}); re-download or re-export the model.") from None


def verify(directory):
    """Checks every file listed in MANIFEST.json: present, full size, same SHA-256.

    Returns:
      the SHA-256 of MANIFEST.json itself.

    Raises:
      ValueError: naming the first missing, truncated or modified file.
    """
    for rel, meta in listed_files(directory).items():
        p = os.path.join(directory, rel)
        if not os.path.exists(p):
            raise ValueError(f"Artifact file missing: {p}. Re-download or re-export the model.")
        size = os.path.getsize(p)
        if size != meta["bytes"]:
            raise ValueError(
                f"Artifact file truncated or changed: {p} has {size} bytes, expected {meta['bytes']}. "
                "Refusing to load it; re-download or re-export the model."
            )
        if sha256_file(p) != meta["sha256"]:
            raise ValueError(
                f"Checksum mismatch for {p}: the file was modified or corrupted. "
                "Refusing to load it; re-download or re-export the model."
            )
    return sha256_file(os.path.join(directory, FILENAME))
