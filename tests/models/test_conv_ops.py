"""``conv_ops.conv2d``: a strided 1x1 convolution as the stride-1 convolution of the subsampled input.

Checked against float64 NumPy (not against TensorFlow's strided convolution,
whose kernel gradient is what is wrong under oneDNN), forward and both
gradients, for "same" and "valid", odd and even sizes, and channel counts on
both sides of oneDNN's channel blocks (8 and 16).
"""

import numpy as np
import pytest
import tensorflow as tf

from dp_zoo.models.conv_ops import conv2d, unit_stride


@pytest.mark.parametrize("h, w, cin, stride, padding", [(8, 8, 4, 2, "same"), (7, 9, 3, 2, "valid"),
                                                        (28, 28, 1, 2, "same"), (9, 9, 17, 3, "same"),
                                                        (16, 16, 8, (2, 1), "valid")])
def test_strided_1x1_convolution_and_its_gradients_are_exact(h, w, cin, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, h, w, cin))
    k = rng.normal(size=(1, 1, cin, 5))
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    xt, kt = tf.constant(x, tf.float32), tf.constant(k, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([xt, kt])
        y = conv2d(xt, kt, strides=stride, padding=padding)
    ho, wo = -(-h // sh), -(-w // sw)
    dy = rng.normal(size=(2, ho, wo, 5))
    dx, dk = tape.gradient(y, [xt, kt], output_gradients=tf.constant(dy, tf.float32))
    sub = x[:, ::sh, ::sw]
    ref_dx = np.zeros_like(x)
    ref_dx[:, ::sh, ::sw] = dy @ k[0, 0].T
    for got, ref in ((y, sub @ k[0, 0]), (dk[0, 0], np.einsum("nhwc,nhwo->co", sub, dy)), (dx, ref_dx)):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_other_convolutions_pass_through():
    x = tf.zeros([1, 8, 8, 3])
    for kernel_size, strides in (((3, 3), (2, 2)), ((1, 1), (1, 1)), ((7, 7), 2), (1, 1)):
        same, s = unit_stride(x, kernel_size, strides)
        assert same is x and s == ((strides, strides) if isinstance(strides, int) else tuple(strides))
    sub, s = unit_stride(tf.zeros([1, 3, 9, 8]), 1, 2, data_format="channels_first")
    assert sub.shape == (1, 3, 5, 4) and s == (1, 1)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float32])
def test_a_strided_convolution_over_a_1x1_input_has_exact_repeatable_gradients(dtype):
    """Failed on an AMD EPYC with AVX512_BF16 before ``unit_stride`` set the stride of a size-1 axis to 1:
    oneDNN's bfloat16 kernel-gradient of a stride-2 3x3 convolution over a 1x1 input returned NaN or
    ~1e36 in some calls (an NF-ResNet's last stage at 16x16 inputs)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 1, 32))
    k = rng.normal(size=(3, 3, 32, 32))
    dy = rng.normal(size=(8, 1, 1, 32))
    assert unit_stride(tf.zeros([8, 1, 1, 32]), (3, 3), 2)[1] == (1, 1)
    assert unit_stride(tf.zeros([8, 1, 5, 32]), (3, 3), 2)[1] == (1, 2)
    # "same" over one pixel: only the centre tap sees the input; the others only padding.
    ref = np.zeros_like(k)
    ref[1, 1] = np.einsum("nc,no->co", x[:, 0, 0], dy[:, 0, 0])
    tol = 2e-2 if dtype == tf.bfloat16 else 1e-5
    for _ in range(6):
        xt, kt = tf.constant(x, dtype), tf.constant(k, dtype)
        with tf.GradientTape() as tape:
            tape.watch(kt)
            y = conv2d(xt, kt, strides=2, padding="same")
        dk = tape.gradient(y, kt, output_gradients=tf.constant(dy, dtype)).numpy().astype(np.float64)
        assert np.linalg.norm(dk - ref) <= tol * np.linalg.norm(ref)
