"""The console scripts that ``pip install`` puts on the PATH (setup.py's ``entry_points``).

Each one is ``python -m dp_zoo.<cli>`` under another name: ``dp-zoo-train``,
``dp-zoo-export``, ``dp-zoo-serve``, ``dp-zoo-privacy``, ``dp-zoo-audit``, ``dp-zoo-zoo``, ``dp-zoo-tune``
and ``dp-zoo-data``.
They live here, apart from the CLIs, because some CLI modules import
TensorFlow when they are imported, and its start-up noise must be silenced
first (``cli.quiet_tensorflow``).
"""

import sys

from dp_zoo import cli


def train():
    """``dp-zoo-train``: ``python -m dp_zoo.train``."""
    cli.quiet_tensorflow()
    from dp_zoo.commands import train as command

    sys.exit(command.main())


def export():
    """``dp-zoo-export``: ``python -m dp_zoo.export``."""
    cli.quiet_tensorflow()
    from dp_zoo.commands import export as command

    sys.exit(command.main())


def serve():
    """``dp-zoo-serve``: ``python -m dp_zoo.serve``."""
    cli.quiet_tensorflow()
    from dp_zoo.publish import serve as command

    sys.exit(command.main())


def privacy():
    """``dp-zoo-privacy``: ``python -m dp_zoo.privacy``."""
    cli.quiet_tensorflow()
    from dp_zoo.commands import privacy as command

    sys.exit(command.main())


def audit():
    """``dp-zoo-audit``: ``python -m dp_zoo.audit``."""
    cli.quiet_tensorflow()
    from dp_zoo.commands import audit as command

    sys.exit(command.main())


def zoo():
    """``dp-zoo-zoo``: ``python -m dp_zoo.zoo`` (list the zoo, register an artifact)."""
    from dp_zoo.commands import zoo as command  # no TensorFlow: nothing to silence

    sys.exit(command.main())


def tune():
    """``dp-zoo-tune``: ``python -m dp_zoo.tune`` (private hyper-parameter tuning)."""
    cli.quiet_tensorflow()
    from dp_zoo.commands import tune as command

    sys.exit(command.main())


def data():
    """``dp-zoo-data``: ``python -m dp_zoo.data`` (import a local copy of MNIST)."""
    from dp_zoo.commands import data as command  # no TensorFlow: nothing to silence

    sys.exit(command.main())
