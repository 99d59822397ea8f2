"""Where a training run publishes, the checks made before its first step, and a publish that fails.

Everything that would make the export at the end refuse is checked before
training starts (``check_target``): an existing ``--publish-dir`` without
``--overwrite``, a directory ``--overwrite`` may not replace (anything but a
dp_zoo artifact, ``manifest.check_replaceable``), a parent directory that
cannot be written (a read-only ``DP_ZOO_HOME``), a ``--publish-dir`` that would
shadow a shipped zoo entry (``check_publish_dir``). By default a run publishes
into a new directory of its own under ``zoo.user_runs_dir()``, never where
``dp_zoo.load(<entry>)`` looks for a shipped entry. What can still fail at the
end (a full disk) is one line (``PublishError``); the trained model is then
saved into the run directory and the line gives the ``python -m
dp_zoo.export`` command that publishes it.
"""

import os
import shlex
import tempfile

from dp_zoo.publish import manifest


class PublishError(RuntimeError):
    """Publishing cannot or could not happen (one line, with the fix)."""


def check_publish_dir(publish_dir):
    """Refuses (ValueError) an explicit ``--publish-dir`` where the model would shadow a shipped zoo entry."""
    from dp_zoo.publish import zoo

    entry = None if publish_dir is None else zoo.shadowed_entry(publish_dir)
    if entry is not None:
        raise ValueError(f"--publish-dir {publish_dir} would put your model where dp_zoo.load({entry!r}) looks "
                         f"for the published {entry!r} (and it would then refuse both); publish elsewhere, "
                         f"e.g. the default {zoo.user_runs_dir()}/.")


def default_publish_dir(name):
    """``<zoo.user_runs_dir()>/<name>-<UTC date and time>``: a user's own model never takes an entry's name."""
    import time

    from dp_zoo.publish import zoo

    base = zoo.user_runs_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return str(path)


def target(name, options):
    """``(publish_dir, overwrite)``: ``--publish-dir`` (replaced only with ``--overwrite``), else a new
    ``default_publish_dir(name)`` (a fresh directory, named when asked: before training for the checks,
    again when publishing)."""
    if options.publish_dir is not None:
        return options.publish_dir, options.overwrite
    return default_publish_dir(name), False


def check_target(publish_dir, overwrite):
    """Refuses, before training, a publish directory the export at the end would refuse or cannot write.

    Raises:
      FileExistsError: it exists and ``overwrite`` is False, or it is not a dp_zoo artifact.
      PublishError: its parent cannot be created or written.
    """
    publish_dir = os.path.abspath(publish_dir)
    if os.path.lexists(publish_dir) and not overwrite:
        raise FileExistsError(f"--publish-dir {publish_dir} already exists; pass --overwrite to replace it (a dp_zoo "
                              "artifact only), or choose another --publish-dir.")
    manifest.check_replaceable(publish_dir)
    parent = os.path.dirname(publish_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        # The export writes a temporary sibling directory, then renames it: try exactly that.
        os.rmdir(tempfile.mkdtemp(prefix=".dp_zoo-write-check.", dir=parent))
    except OSError as e:
        raise PublishError(f"cannot publish to {publish_dir}: {parent} is not writable ({e.strerror or e}). "
                           "Pass a writable --publish-dir (or set DP_ZOO_HOME to one), or --nopublish.") from None


def export_command(run_dir, name, publish_dir, overwrite):
    """The ``python -m dp_zoo.export`` command that publishes the model saved in ``run_dir``."""
    argv = ["python", "-m", "dp_zoo.export", "--model", os.path.join(run_dir, "model.keras"),
            "--run-record", os.path.join(run_dir, "run_record.json"), "--entry", name, "--out", publish_dir]
    return " ".join(shlex.quote(a) for a in argv) + (" --overwrite" if overwrite else "")


def publish(model, record, name, options, run_dir):
    """Exports ``model`` with its card where ``target`` says; returns the directory.

    Raises:
      PublishError: the export failed on the file system (a full disk, a
        directory that appeared meanwhile): one line, with the model saved
        as ``<run_dir>/model.keras`` and the command that publishes it.
      ValueError: a --publish-dir that would shadow a shipped entry; or the
        model cannot be published at all (non-finite weights,
        a record that does not match it).
    """
    from dp_zoo.publish import artifact, listing

    check_publish_dir(options.publish_dir)  # also for dp_zoo.tune, which checks nothing before its trials
    publish_dir, overwrite = target(name, options)
    try:
        artifact.export_model(model, record, publish_dir, entry_name=name, overwrite=overwrite,
                              zoo_points=listing.points_for_new_card(record["data"]["dataset"], name))
    except OSError as e:  # FileExistsError included
        why = str(e) if isinstance(e, FileExistsError) else (e.strerror or str(e))
        saved = os.path.join(run_dir, "model.keras")
        try:
            model.save(saved)
        except Exception as save_error:  # noqa: BLE001  the same full disk, most likely
            raise PublishError(
                f"publishing to {publish_dir} failed: {why}; saving the model into {run_dir} failed too "
                f"({save_error}). Free some space and re-run the same command: it resumes from the last "
                "checkpoint and publishes.") from None
        raise PublishError(f"publishing to {publish_dir} failed: {why}. The trained model is saved in {saved}; "
                           f"publish it with: {export_command(run_dir, name, publish_dir, overwrite)}") from None
    return publish_dir
