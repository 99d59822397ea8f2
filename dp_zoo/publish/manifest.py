"""An artifact's MANIFEST.json: the SHA-256 and size of every file, written and verified.

Export writes the manifest last; the zoo verifies every file against it, and
the manifest itself against the zoo table's SHA-256, before anything is
loaded. Only the standard library is used for files, so that listing and checking
artifacts never needs TensorFlow; ``weights_sha256`` (the digest of a model's
weights that a run record binds to its published model) needs numpy.

An artifact is exactly what its manifest lists, and nothing outside it: a
listed path must be relative, inside the artifact (no ``..``, no absolute
path), a regular file reached without any symbolic link, and of the listed
size (checked with ``lstat`` before a byte is read, so a device or a FIFO is
never opened); a file the manifest does not list is refused too (TF Serving
and ``tf.saved_model.load`` read whole directories). The manifest is read
from a hostile source as much as any other file: its shape is checked, and
no message says anything about a file outside the artifact.
"""

import hashlib
import json
import os
import re
import stat

FILENAME = "MANIFEST.json"
VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # a manifest of a few thousand files is kilobytes
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIX = "re-download or re-export the model"


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


def _read_manifest(directory):
    path = os.path.join(directory, FILENAME)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ValueError(f"{directory} has no {FILENAME}; it is not a dp_zoo artifact. "
                         "Re-export it with dp_zoo.export.") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file (a symbolic link or a device); {_FIX}.")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is {st.st_size} bytes, more than any manifest dp_zoo writes; {_FIX}.")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except ValueError as e:
        raise ValueError(f"{path} is corrupt or truncated ({e}); {_FIX}.") from None


def check_path(rel):
    """The problem with a manifest path ``rel`` (a string), or None if it names a file inside the artifact.

    Only the string is looked at: nothing outside the artifact is touched.
    """
    if not isinstance(rel, str) or not rel:
        return "not a non-empty string"
    if rel.startswith("/") or "\\" in rel or "\0" in rel or ":" in rel.split("/")[0]:
        return "not a relative path inside the artifact"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "not a relative path inside the artifact (it has an empty, '.' or '..' component)"
    return None


def listed_files(directory):
    """``{relative path: {"sha256", "bytes"}}`` as the manifest lists them (paths and shape checked,
    files not read).

    Raises:
      ValueError: no manifest, a corrupt one, or an entry that is not a
        relative path inside the artifact with a SHA-256 and a size.
    """
    m = _read_manifest(directory)
    path = os.path.join(directory, FILENAME)
    if not isinstance(m, dict) or m.get("manifest_version") != VERSION:
        raise ValueError(f"{path} is not a dp_zoo manifest (version {VERSION}); {_FIX}.")
    files = m.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{path} has no 'files' table; {_FIX}.")
    for rel, meta in files.items():
        problem = check_path(rel)
        if problem:
            raise ValueError(f"{path} lists {rel!r}, which is {problem}; refusing the artifact ({_FIX}).")
        if rel == FILENAME:
            raise ValueError(f"{path} lists itself; {_FIX}.")
        ok = (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and _SHA256.match(meta["sha256"])
              and isinstance(meta.get("bytes"), int) and not isinstance(meta["bytes"], bool) and meta["bytes"] >= 0)
        if not ok:
            raise ValueError(f"{path}: the entry for {rel} needs a hex 'sha256' and an integer 'bytes' >= 0; "
                             f"{_FIX}.")
    return files


def unlisted(directory, files=None):
    """Everything under ``directory`` that is not a directory and not listed: files, symbolic links
    (to directories too), devices; sorted relative paths. Empty directories are not reported."""
    files = listed_files(directory) if files is None else files
    out = []
    for root, dirs, names in os.walk(directory):
        for n in dirs:
            if os.path.islink(os.path.join(root, n)):  # os.walk does not follow it: report it
                names.append(n)
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), directory).replace(os.sep, "/")
            if rel != FILENAME and rel not in files:
                out.append(rel)
    return sorted(out)


def _lstat_inside(directory, rel):
    """``os.lstat`` of listed ``rel``, refusing a symbolic link on the way or a non-regular file."""
    p = directory
    parts = rel.split("/")
    for i, part in enumerate(parts):
        p = os.path.join(p, part)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise ValueError(f"Artifact file missing: {os.path.join(directory, rel)}. {_FIX.capitalize()}.") from None
        except NotADirectoryError:
            raise ValueError(f"Artifact file missing: {os.path.join(directory, rel)} (a file stands where a "
                             f"directory should). {_FIX.capitalize()}.") from None
        if stat.S_ISLNK(st.st_mode):
            raise ValueError(f"Artifact path {os.path.join(directory, *parts[:i + 1])} is a symbolic link; an "
                             f"artifact holds regular files only. Refusing it; {_FIX}.")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"Artifact path {os.path.join(directory, rel)} is not a regular file; refusing it; {_FIX}.")
    return st


def _sha256_checked(path, st):
    """SHA-256 of the regular file ``path`` whose ``lstat`` was ``st``; refuses it if it changed since."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        now = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise ValueError(f"Artifact file {path} changed while it was verified; refusing it.")
        h = hashlib.sha256()
        left = st.st_size + 1  # one byte more than listed shows a file that grew
        while left > 0:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        if left <= 0:
            raise ValueError(f"Artifact file {path} grew while it was verified; refusing it.")
        return h.hexdigest()


def verify(directory):
    """Checks the artifact is exactly what MANIFEST.json lists: every listed file present, a regular
    file inside the artifact, full size, same SHA-256; nothing unlisted.

    Returns:
      the SHA-256 of MANIFEST.json itself.

    Raises:
      ValueError: naming the first bad entry, or the unlisted files.
    """
    directory = str(directory)
    files = listed_files(directory)
    # Cheap checks first (lstat only), then the hashes.
    stats = {rel: _lstat_inside(directory, rel) for rel in files}
    extra = unlisted(directory, files)
    if extra:
        shown = ", ".join(f"{e} (a symbolic link)" if os.path.islink(os.path.join(directory, e)) else e
                          for e in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ValueError(f"{directory} holds files its {FILENAME} does not list: {shown}. Refusing it; remove "
                         f"them or {_FIX}.")
    for rel, meta in files.items():
        p = os.path.join(directory, rel)
        st = stats[rel]
        if st.st_size != meta["bytes"]:
            raise ValueError(
                f"Artifact file truncated or changed: {p} has {st.st_size} bytes, expected {meta['bytes']}. "
                f"Refusing to load it; {_FIX}."
            )
        if _sha256_checked(p, st) != meta["sha256"]:
            raise ValueError(
                f"Checksum mismatch for {p}: the file was modified or corrupted. "
                f"Refusing to load it; {_FIX}."
            )
    return sha256_file(os.path.join(directory, FILENAME))


def check_replaceable(directory):
    """Refuses to let ``--overwrite`` replace ``directory`` unless it is a dp_zoo artifact.

    A directory may be replaced when it is empty, or holds a dp_zoo
    MANIFEST.json and nothing that manifest does not list (its listed files
    may be missing or corrupt: replacing a broken artifact is what overwrite
    is for). A missing directory is fine.

    Raises:
      FileExistsError: one line naming what would have been lost.
    """
    directory = str(directory)
    if not os.path.lexists(directory):
        return
    how = "--overwrite (overwrite=True) replaces only a dp_zoo artifact directory"
    if os.path.islink(directory) or not os.path.isdir(directory):
        raise FileExistsError(f"{directory} is not a dp_zoo artifact (it is a file or a symbolic link); {how}. "
                              "Choose another directory.")
    if not os.listdir(directory):
        return
    try:
        extra = unlisted(directory)
    except ValueError:
        some = sorted(os.listdir(directory))
        raise FileExistsError(
            f"{directory} is not a dp_zoo artifact (no valid {FILENAME}; it holds {', '.join(some[:3])}"
            f"{', ...' if len(some) > 3 else ''}); {how}. Choose another directory, or move its files away.") from None
    if extra:
        raise FileExistsError(
            f"{directory} is not a dp_zoo artifact: it holds files its {FILENAME} does not list "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); {how}. Choose another directory, "
            "or move those files away.")
