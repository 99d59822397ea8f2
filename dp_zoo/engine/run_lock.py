"""One training per run directory: an exclusive lock on ``<run_dir>/.lock``.

Two trainings writing one run directory would interleave checkpoints and the
privacy journal (whose record of spent steps the guarantee rests on). The
lock is ``fcntl.flock`` on a file in the run directory: the kernel releases
it when its process ends, however it ends, so a lock file left by a dead run
never blocks the next one. The file holds the holder's PID, for the message.
A run that ends removes the file (and the run directory, if the lock created
it and nothing else was written); the lock is taken only on a file that is
still the one at that path, so removing it cannot let two runs in. Only the
chief of a multi-worker run takes it (only the chief writes).
"""

import contextlib
import fcntl
import os

FILENAME = ".lock"


class RunDirInUseError(RuntimeError):
    """Another live process holds the run directory (the message names its PID)."""


class RunDirLock:
    """A held lock; ``release()`` (or the process's exit) lets the next run in."""

    def __init__(self, run_dir, fd, created_dir):
        self.run_dir = run_dir
        self._fd = fd
        self._created_dir = created_dir

    def release(self):
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.run_dir, FILENAME))  # still ours: removed before the lock is dropped
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
        if self._created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.run_dir)  # only if the run wrote nothing into it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(fd):
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def acquire(run_dir):
    """Locks ``run_dir`` (created if missing) for this process.

    Returns:
      a ``RunDirLock``.

    Raises:
      RunDirInUseError: another live process holds it.
    """
    created = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, FILENAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirInUseError(
                f"run directory {run_dir} is in use by another training (PID {holder}); wait for it to finish "
                "(or stop it), or pass another --run-dir.") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as we opened it: lock the one there now
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunDirLock(run_dir, fd, created)
