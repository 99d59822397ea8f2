"""Helpers shared by several test modules (test modules never import each other).

- ``train_subprocess``: ``python -m dp_zoo.train ARGS`` as a user runs it (a real process);
- ``train_in_process``: the same command line through the CLI's own flag parser and ``main()``
  in this process (no interpreter and TensorFlow start-up), for everything but exit-code plumbing;
- ``free_ports``: loopback ports for multi-worker clusters.
"""

import os
import socket
import subprocess
import sys

# A tiny private run through the CLI: sigma given (no calibration), 2 steps of the tiny WRN.
TINY_TRAIN_ARGS = ["--model", "wrn_test", "--steps", "2", "--batch-size", "64", "--physical-batch-size", "64",
                   "--augmult", "1", "--noise-multiplier", "1.0", "--ema", "0", "--noprogress"]


def train_subprocess(*args, env=None, timeout=300):
    """Runs ``python -m dp_zoo.train ARGS`` in a new process; returns the CompletedProcess."""
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dp_zoo.train", *args], capture_output=True,
                          text=True, timeout=timeout, env=e)


def train_in_process(*args):
    """``python -m dp_zoo.train ARGS`` in this process: the CLI's flag parser, then ``main()``.

    Returns the exit code the process would have: ``_parse`` exits with 2 on a
    flag-parsing error (absl's own errors), ``main`` returns 0, 1 or 2.
    Flags are reset before and after, so runs do not leak into each other.
    """
    from dp_zoo.train import __main__ as cli

    cli.FLAGS.unparse_flags()
    try:
        try:
            cli._parse(["dp_zoo.train", *args])
        except SystemExit as e:
            return e.code
        return cli.main(["dp_zoo.train"])
    finally:
        cli.FLAGS.unparse_flags()


def free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
