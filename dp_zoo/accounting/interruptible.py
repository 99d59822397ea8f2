"""Keeping the main thread responsive to a stop request during a long accounting call.

``run_interruptibly`` runs the call in a daemon thread so that the main
thread stays responsive to a stop request (a SIGTERM handler that sets a
flag) while numpy runs the FFTs of a PLD composition.
"""

import threading


class AccountingInterrupted(RuntimeError):
    """A stop was requested while an accounting call was still running."""


def run_interruptibly(fn, should_stop, poll_s=0.2):
    """Runs ``fn()`` in a daemon thread; returns its result, unless stopped.

    The calling thread waits in polls of ``poll_s`` seconds and checks
    ``should_stop()`` after each, so a stop request (e.g. a flag set by a
    SIGTERM handler, which Python runs in the main thread between waits) is
    honoured within about ``poll_s`` even while ``fn`` is in the middle of a
    long numpy computation.

    Args:
      fn: a callable without arguments.
      should_stop: a callable returning True when the caller must stop.
      poll_s: the polling interval in seconds.

    Returns:
      ``fn()``'s result.

    Raises:
      AccountingInterrupted: ``should_stop()`` became True first (also when
        it is True before ``fn`` starts; then ``fn`` is not started). The
        worker thread is abandoned: it finishes in the background and its
        result is discarded; being a daemon, it does not keep the process
        alive.
      Exception: whatever ``fn`` raised, with its traceback.
    """
    if should_stop():
        raise AccountingInterrupted("stop requested before the accounting started")
    box = {}
    done = threading.Event()

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="dp_zoo-accounting", daemon=True).start()
    while not done.wait(poll_s):
        if should_stop():
            raise AccountingInterrupted(
                "stop requested while the accountant was computing; its result is discarded"
            )
    if "error" in box:
        raise box["error"]
    return box["value"]
