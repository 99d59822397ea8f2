"""Fetching a zoo artifact from its remote location into a local directory, verified first.

A remote is an ``https://`` or ``file://`` URL of a ``.tar.gz`` holding
``<entry>/`` (``dp_zoo.export.package`` writes one), or
``kaggle:<owner>/<model>/<framework>/<variation>`` (needs ``kagglehub``).
Nothing is put in place until the archive's checksum and the caller's check
have passed (the zoo's: ``manifest.verify``, which refuses links, devices,
paths outside the artifact and unlisted files, then the card against its run
record); a failed download leaves nothing behind.
"""

import os
import shutil
import tarfile
import tempfile
import urllib.request

from dp_zoo.publish import manifest


def fetch(name, remote, dest, *, archive_sha256=None, check):
    """Downloads entry ``name``'s artifact from ``remote`` into ``dest``.

    Args:
      name: the entry; a ``.tar.gz`` must hold ``<name>/``.
      remote: the remote location (see the module docstring).
      dest: the final directory (a ``pathlib.Path``), e.g. ``<cache>/<name>``.
      archive_sha256: the expected SHA-256 of a ``.tar.gz``; None skips that check.
      check: called with the unpacked directory before it is moved to
        ``dest``; it raises to refuse the artifact.

    Returns:
      ``dest``.

    Raises:
      ValueError: a checksum mismatch, an archive without ``<name>/``, or
        whatever ``check`` raises.
      ImportError: a Kaggle remote without ``kagglehub``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A sibling temporary directory keeps the final rename on one file system.
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent)
    try:
        if remote.startswith("kaggle:"):
            root = _from_kaggle(name, remote, tmp)
        else:
            root = _from_url(name, remote, tmp, archive_sha256)
        check(root)
        try:
            os.replace(root, dest)
        except OSError:
            if not dest.is_dir():  # someone else won a race: keep theirs if it exists
                raise
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_kaggle(name, remote, tmp):
    try:
        import kagglehub
    except ImportError as e:
        raise ImportError(f"{name!r} is hosted on Kaggle Models; pip install kagglehub") from e
    src = kagglehub.model_download(remote[len("kaggle:"):])
    root = os.path.join(tmp, name)
    # symlinks=True copies a link as a link (which verification then refuses), never the file it points to.
    shutil.copytree(src, root, symlinks=True)
    return root


def _from_url(name, remote, tmp, archive_sha256):
    archive = os.path.join(tmp, "artifact.tar.gz")
    with urllib.request.urlopen(remote, timeout=60) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f)
    got = manifest.sha256_file(archive)
    if archive_sha256 and got != archive_sha256:
        raise ValueError(
            f"Checksum mismatch for the download of {name!r} from {remote}: expected "
            f"{archive_sha256[:16]}..., got {got[:16]}... (truncated or tampered). Nothing was installed."
        )
    with tarfile.open(archive) as t:
        # filter="data" refuses absolute paths, links out of the tree, devices.
        t.extractall(os.path.join(tmp, "x"), filter="data")
    root = os.path.join(tmp, "x", name)
    if os.path.islink(root) or not os.path.isdir(root):
        raise ValueError(f"the archive at {remote} does not contain the directory {name}/")
    return root
