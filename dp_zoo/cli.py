"""What dp_zoo's command lines share: one flag style, one error format, a quiet start.

Every CLI (``python -m dp_zoo.train``, ``.export``, ``.serve``, ``.privacy``,
``.audit``) builds its parser here, so that all of them

- spell flags with dashes (``--batch-size``) and also accept the same name
  with underscores (``--batch_size``, the absl spelling some of them used);
- spell a boolean ``--publish`` / ``--no-publish`` (absl's ``--nopublish``
  and ``--publish=false`` also work);
- report a bad command line as one line, ``dp_zoo.<cli>: error: ...``, and
  exit with status 2.

``quiet_tensorflow`` is for entry points only (``__main__`` blocks and the
console scripts), never for library code: it decides how TensorFlow logs in
the whole process.

This module imports nothing from dp_zoo, so that every CLI can use it.
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import re
import sys
import tempfile

# TensorFlow's C++ start-up lines on import and device discovery: CUDA probing
# on a machine without a GPU, CPU-feature and oneDNN notices, and absl's notice
# that logging is not initialised. TF_CPP_MIN_LOG_LEVEL does not reach all of
# them (the CUDA stub logs through absl directly), hence the filter.
_TF_STARTUP_NOISE = re.compile(
    r"cudart_stub|cuda_platform|cuda_driver|failed call to cuInit|Unable to register cu\w+ factory"
    r"|computation_placer|cpu_feature_guard|To enable the following instructions"
    r"|oneDNN custom operations|absl::InitializeLog|TF-TRT Warning"
)


def quiet_tensorflow():
    """Hides TensorFlow's C++ start-up noise in this process, unless the user chose a log level.

    Call it before TensorFlow is imported. It sets ``TF_CPP_MIN_LOG_LEVEL=2``
    (warnings and info off, errors kept) and filters the start-up lines that
    ignore that setting out of stderr while TensorFlow is imported (whenever
    that happens; other stderr output passes through). A user who sets
    ``TF_CPP_MIN_LOG_LEVEL`` themselves gets TensorFlow's own output untouched,
    except pfor's "uses a while_loop. Fix that!" warnings, which are always
    dropped (``_DropPforAdvice``).
    """
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        filter_tensorflow_startup()
    else:
        _drop_pfor_advice()


def filter_tensorflow_startup():
    """Drops TensorFlow's start-up noise (``_TF_STARTUP_NOISE``) and pfor's advice; changes nothing else.

    What ``import dp_zoo`` does, so that library use is as quiet as the
    command lines: the lines that name a missing GPU driver or the CPU's
    features, printed while TensorFlow imports, are filtered out of stderr
    (other stderr output passes through); TensorFlow's log level is left to
    the user. Nothing happens if TensorFlow is already imported or the user
    set ``TF_CPP_MIN_LOG_LEVEL``.
    """
    _drop_pfor_advice()
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


def _drop_pfor_advice():
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropPforAdvice) for f in tf_logger.filters):
        tf_logger.addFilter(_DropPforAdvice())


def after_import(name, fn):
    """Calls ``fn(module)`` once the top-level module ``name`` is imported: now if it is, else right after.

    ``fn`` must not import anything that imports ``name``'s importers (it may
    run in the middle of another package's import, e.g. TensorFlow imports
    Keras); an exception in ``fn`` is swallowed, never breaking the import.
    """
    module = sys.modules.get(name)
    if module is not None:
        _call_quietly(fn, module)
    elif not any(isinstance(f, _AfterImportFinder) and f.name == name and f.fn is fn for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportFinder(name, fn))


def _call_quietly(fn, module):
    try:
        fn(module)
    except Exception:  # noqa: BLE001  a convenience hook must never break the user's import
        pass


class _AfterImportFinder:
    """Finds ``name`` with the usual finders, then runs ``fn`` on the module once it has executed."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn
        self._busy = False

    def find_spec(self, name, path=None, target=None):
        # Stays in place until the module executes: a mere importlib.util.find_spec(name) (TensorFlow
        # asks whether Keras exists before importing it) must not use the hook up.
        if name != self.name or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec, fn, finder = spec.loader.exec_module, self.fn, self

        def exec_module(module):
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            real_exec(module)
            _call_quietly(fn, module)

        spec.loader.exec_module = exec_module
        return spec


class _DropPforAdvice(logging.Filter):
    """Drops pfor's "<Op> uses a while_loop. Fix that!" warnings.

    Vectorised per-example gradients trace ops that pfor has no batched rule
    for; it says so once per op and trace, advice for TensorFlow's developers
    that a user of a CLI can do nothing about.
    """

    def filter(self, record):
        return "uses a while_loop. Fix that!" not in record.getMessage()


class _QuietTensorFlowFinder:
    """Finds ``tensorflow`` with the usual finders and imports it under ``_filtered_stderr``."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            with _filtered_stderr(_TF_STARTUP_NOISE):
                real_exec(module)
                # The CUDA platform logs when devices are first listed, not on
                # import; listing them here does not start the runtime, so
                # strategies and logical devices can still be configured.
                module.config.list_physical_devices()

        spec.loader.exec_module = exec_module  # this module's own loader instance
        return spec


@contextlib.contextmanager
def _filtered_stderr(noise):
    """Everything written to file descriptor 2 inside the block, less the lines ``noise`` matches."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [ln for ln in text.splitlines(keepends=True) if not noise.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def announce_after(seconds, message, stream=None):
    """Prints ``message`` (one line, to stderr) if the block is still running after ``seconds``.

    For the waits a user cannot see the end of (sigma calibration, the first
    step's tracing, a long accounting call): a fast block prints nothing, a
    slow one says what is happening instead of staying silent. Library code
    may use it: the line goes to stderr, never into a command's JSON.
    """
    import threading

    out = stream if stream is not None else sys.stderr

    def say():
        try:
            print(message, file=out, flush=True)
        except (OSError, ValueError):  # a closed stream: nothing to tell
            pass

    timer = threading.Timer(seconds, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class _Formatter(argparse.HelpFormatter):
    """Lists only an option's documented spellings in --help (aliases still parse)."""

    def _format_action_invocation(self, action):
        shown = getattr(action, "shown", None)
        if not shown:
            return super()._format_action_invocation(action)
        every = action.option_strings
        action.option_strings = shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = every


class _Switch(argparse.Action):
    """A boolean flag: its positive spellings set True, its negative ones False."""

    def __init__(self, option_strings, dest, negatives=(), default=None, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)
        self.negatives = frozenset(negatives)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.negatives)


_TRUE, _FALSE = ("true", "t", "1", "yes"), ("false", "f", "0", "no")


class Parser(argparse.ArgumentParser):
    """An ``argparse`` parser with dp_zoo's flag style and one-line errors.

    Args:
      name: the CLI's name in error messages (``dp_zoo.train``).
      **kwargs: for ``argparse.ArgumentParser`` (``prog``, ``description``...).
    """

    def __init__(self, name, **kwargs):
        kwargs.setdefault("prog", f"python -m {name}")
        super().__init__(allow_abbrev=False, formatter_class=_Formatter, **kwargs)
        self.name = name
        self._switches = {}  # spelling -> (positive spelling, negative spelling, is negative)

    def option(self, name, *aliases, **kwargs):
        """Adds ``--name`` (dashes), which also parses as ``--name_with_underscores`` and ``aliases``."""
        strings = _spellings(name, *aliases)
        action = self.add_argument(*strings, dest=name.replace("-", "_"), **kwargs)
        action.shown = [f"--{name}"]
        return action

    def switch(self, name, *, default, help):
        """Adds the boolean ``--name`` / ``--no-name`` (also ``--noname``, underscores, ``--name=false``)."""
        positive = _spellings(name)
        negative = _spellings(f"no-{name}", f"no{name}", f"no{name.replace('-', '_')}")
        action = self.add_argument(*positive, *negative, action=_Switch, negatives=negative,
                                   dest=name.replace("-", "_"), default=default, help=help)
        action.shown = [f"--{name}"] if default is False else [f"--{name}", f"--no-{name}"]
        for s in positive:
            self._switches[s] = (positive[0], negative[0], False)
        for s in negative:
            self._switches[s] = (positive[0], negative[0], True)
        return action

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._explicit_switch(a) for a in args], namespace)

    def _explicit_switch(self, arg):
        """``--publish=false`` -> ``--no-publish`` (absl's spelling of a boolean value)."""
        flag, eq, value = arg.partition("=")
        if not eq or flag not in self._switches:
            return arg
        positive, negative, negated = self._switches[flag]
        if value.lower() not in _TRUE + _FALSE:
            self.error(f"{flag} takes true or false, got {value!r}")
        return positive if (value.lower() in _TRUE) != negated else negative

    def error(self, message):
        """Prints ``<name>: error: <message>`` as one line and exits with status 2."""
        for action in self._actions:  # argparse names an option by all its spellings
            if getattr(action, "shown", None):
                message = message.replace("/".join(action.option_strings), action.shown[0])
        self.exit(2, f"{self.name}: error: {message} (see --help)\n")


def unknown_name_message(kind, name, known):
    """An error message for an unknown ``name`` that lists close matches (no TensorFlow needed)."""
    import difflib

    close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Known {kind}s: {', '.join(known)}."
    return f"Unknown {kind} {name!r}.{hint}"


def _spellings(name, *aliases):
    """``--name``, ``--name_with_underscores`` and ``--alias`` for each alias, without repeats."""
    out = []
    for n in (name, name.replace("-", "_"), *aliases):
        if f"--{n}" not in out:
            out.append(f"--{n}")
    return out


@contextlib.contextmanager
def output_to(path):
    """Sends everything this process prints inside the block, by Python or by TensorFlow's C++
    logging (file descriptors 1 and 2 included), to the file ``path`` (appended).

    ``dp_zoo.tune`` runs its trials inside it: any line a trial prints, even a warning per
    trace, would show the secret number of trials by its count on the console.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_streams = sys.stdout, sys.stderr
    with open(path, "a") as f:
        try:
            saved_fds = [os.dup(1), os.dup(2)]
        except OSError:  # no file descriptors (an embedded interpreter): Python's streams only
            saved_fds = None
        try:
            if saved_fds:
                os.dup2(f.fileno(), 1)
                os.dup2(f.fileno(), 2)
            sys.stdout = sys.stderr = f
            yield
        finally:
            f.flush()
            sys.stdout, sys.stderr = saved_streams
            if saved_fds:
                for fd, saved in zip((1, 2), saved_fds):
                    os.dup2(saved, fd)
                    os.close(saved)
