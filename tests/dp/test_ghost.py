"""Ghost norms of WS convolutions: patch Grams both ways, and norms equal to the kernel-gradient path."""

import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo.dp import ghost


@pytest.mark.parametrize("kernel,strides,padding,hw", [
    (3, 1, "same", 7), (3, 2, "same", 8), (3, 2, "same", 7), (1, 2, "same", 8), (3, 1, "valid", 6)])
def test_patch_gram_both_ways_and_ghost_norms_equal_the_kernel_gradient_path(kernel, strides, padding, hw):
    """``patch_gram`` from patches and from the pixel Gram agree with the patches' own Gram;
    ``ghost_ws_sq_norms`` equals the norm of the WS backward of the per-example kernel gradient."""
    from dp_zoo.models.ws_math import ws_backward, ws_geometry, ws_kernel_sq_norms

    rng = np.random.default_rng(7)
    b, k, cin, cout = 3, 2, 4, 6
    layer = dp_zoo.models.ws_conv.WSConv2D(cout, kernel, strides=strides, padding=padding)
    layer.build((None, hw, hw, cin))
    x = rng.normal(size=(b, k, hw, hw, cin)).astype("float32")
    w = rng.normal(size=(kernel, kernel, cin, cout)).astype("float32")
    flat = x.reshape(b * k, hw, hw, cin)
    p = ghost.conv_patches(tf.constant(flat), layer).numpy()  # [B*K, positions, D]
    want = tf.nn.conv2d(flat, w, strides=strides, padding=padding.upper()).numpy().reshape(b * k, -1, cout)
    np.testing.assert_allclose(p @ w.reshape(-1, cout), want, rtol=1e-4, atol=1e-4)
    p = p.reshape(b, -1, p.shape[-1])  # all views of an example: T = K x positions
    for method in ("patches", "pixels"):
        gram, rows = ghost.patch_gram(tf.constant(x), layer, method=method)
        np.testing.assert_allclose(gram.numpy(), p @ p.transpose(0, 2, 1), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(rows.numpy(), p.sum(-1), rtol=1e-4, atol=1e-4)
    dpre = tf.constant(rng.normal(size=(b, p.shape[1], cout)).astype("float32"))
    a = tf.reshape(tf.einsum("btd,bto->bdo", p, dpre), [b, kernel, kernel, cin, cout])
    ds, s, c = ws_geometry(tf.constant(w), eps=1e-4)
    pa = tf.reduce_sum(a * ds, axis=(1, 2, 3))
    direct = tf.reduce_sum(tf.square(ws_backward(a, ds, s, c, 1.0)), axis=(1, 2, 3, 4)).numpy()
    np.testing.assert_allclose(ws_kernel_sq_norms(a, ds, s, c).numpy(), direct, rtol=1e-4)
    # With the gain folded in: ``a`` is w.r.t. d * s * gain, the norm is of ws_backward(a, ..., gain).
    gain = tf.constant(rng.normal(size=[cout]).astype("float32"))
    folded = tf.reduce_sum(tf.square(ws_backward(a, ds, s, c, gain)), axis=(1, 2, 3, 4)).numpy()
    np.testing.assert_allclose(ws_kernel_sq_norms(a, ds, s, c, gain=gain).numpy(), folded, rtol=1e-4)
    gram, rows = ghost.patch_gram(tf.constant(x), layer)
    np.testing.assert_allclose(ghost.ghost_ws_sq_norms(gram, rows, dpre, pa, ds, s, c).numpy(), direct, rtol=1e-4)
