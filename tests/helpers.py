"""Helpers shared by several test modules (test modules never import each other).

- ``train_subprocess``: ``python -m dp_zoo.train ARGS`` as a user runs it (a real process);
- ``train_in_process``: the same command line through the CLI's ``main()``
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
    """``python -m dp_zoo.train ARGS`` in this process, through the CLI's ``main()``.

    Returns the exit code the process would have: the flag parser exits with 2
    on a command line it cannot parse, ``main`` returns 0, 1 or 2.
    """
    from dp_zoo.commands import train as cli

    try:
        return cli.main(list(args))
    except SystemExit as e:
        return e.code


def free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def naive_per_example_grads(model, images, labels):
    """Per example, a GradientTape over its K views (mean loss): ``[B]`` lists of float64 gradients.

    Compiled with XLA, whose CPU convolutions are not oneDNN's: with oneDNN's
    custom operations on (TensorFlow's default on AVX-512 CPUs), the eager
    tape's gradients of ``wrn_mnist`` (28x28) were off by up to 2e-3 for one
    example of three on an AMD EPYC (AVX512_BF16), against the same tape
    with ``TF_ENABLE_ONEDNN_OPTS=0``, against XLA (within 3e-5) and against
    dp_zoo's own per-example path (within 5e-7). A reference must not carry
    that error.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def grads(views, label):
        with tf.GradientTape() as tape:
            logits = model(views, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                tf.repeat(label, tf.shape(views)[0]), logits, from_logits=True))
        return tape.gradient(loss, model.trainable_variables)

    return [[x.numpy().astype(np.float64) for x in grads(tf.constant(images[i]), tf.constant(labels[i]))]
            for i in range(images.shape[0])]


def clip_and_sum(grads, l2_clip, mask):
    """The reference DP-SGD sum of per-example gradients: clip each to ``l2_clip``, mask, add up.

    Returns ``(sum as float64 arrays, per-example norms)``.
    """
    import numpy as np

    total = [np.zeros_like(x) for x in grads[0]]
    norms = []
    for g, m in zip(grads, mask):
        n = np.sqrt(sum(np.sum(x**2) for x in g))
        norms.append(n)
        f = min(1.0, l2_clip / n) * m
        total = [t + f * x for t, x in zip(total, g)]
    return total, np.array(norms)


def naive_clipped_sum(model, images, labels, l2_clip, mask):
    """The reference DP-SGD sum: per example a GradientTape over its K views (mean loss), clip, sum.

    Returns ``(sum as float64 arrays, per-example norms)``.
    """
    return clip_and_sum(naive_per_example_grads(model, images, labels), l2_clip, mask)


def assert_equals_naive_loop(m, x, y, mask, *, rel, **kwargs):
    """``dp_zoo.dp.clipped_grad_sum`` (in a tf.function) equals the naive loop, at clip norms that clip
    every example (1e-3) and none (1e3)."""
    import numpy as np
    import tensorflow as tf

    from dp_zoo import dp

    step = tf.function(lambda c: dp.clipped_grad_sum(m, x, y, l2_clip=c, mask=mask, **kwargs))
    per_example = naive_per_example_grads(m, x, y)
    for c in (1e-3, 1e3):
        got, norms = step(tf.constant(c))
        want, want_norms = clip_and_sum(per_example, c, mask)
        np.testing.assert_allclose(norms.numpy(), want_norms, rtol=1e-4)
        flat_got = np.concatenate([g.numpy().ravel() for g in got])
        flat_want = np.concatenate([w.ravel() for w in want])
        assert np.linalg.norm(flat_got - flat_want) <= rel * np.linalg.norm(flat_want) + 1e-7
