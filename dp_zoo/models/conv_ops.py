"""The 2-D convolution every dp_zoo layer and the DP step use: never a strided 1x1 convolution.

Why. With oneDNN's custom operations on (TensorFlow's default on Linux CPUs
with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, e.g. Intel Xeons from Cascade
Lake and AMD EPYCs from Zen 4 on; ``TF_ENABLE_ONEDNN_OPTS=1`` elsewhere),
TensorFlow runs ``Conv2DBackpropFilter`` of a 1x1 convolution with stride > 1
on an NHWC input in oneDNN's ``jit_1x1`` backward-weights kernels. These copy
the strided input into a unit-stride workspace ("rtus") that is booked at
``cin`` channels per position but addressed by the kernel's channel block
(8 with AVX2, 16 with AVX-512), so with fewer input channels than the block
they write past it. Measured here (TensorFlow 2.21, oneDNN 3.7.3, AVX2, 2
cores): the kernel gradient is wrong for 1 to 7 input channels (relative
errors 0.2 to 1.3), and with one thread per op the overrun corrupts the heap
("free(): invalid size", segfaults); 8 to 64 channels, stride 1, and 3x3 or
7x7 kernels are exact. ``wrn_test``'s strided skip convolution (4 input
channels) met it in the DP step and in the non-private gradient (issue #27);
WRN-16-4's (64 and 128 channels) never did. Upstream:
uxlfoundation/oneDNN#6035 ("1x1 convolution backward_weights writes past the
rtus workspace (nhwc, IC < ic_block)", open); no TensorFlow issue found.

A second kernel, measured on an AMD EPYC with AVX512_BF16 (TensorFlow 2.21, 2 cores): the
bfloat16 ``Conv2DBackpropFilter`` of a 3x3 convolution with stride 2 over a 1x1 input (an
NF-ResNet's last stage at 16x16 inputs) returns NaN or values near 1e36 in one call of two or
three, the same call with the same inputs: the kernel taps that meet only padding are left
unwritten. Stride 1 over the same input, and float32, are exact. Along an axis of size 1 the
stride changes nothing but the kernel chosen, so ``unit_stride`` sets it to 1 there. No
upstream issue found.

The way round. A 1x1 convolution with stride s reads every s-th pixel only
and pads nothing under "same" or "valid" (``ceil(h / s)`` output rows
either way): it is exactly the stride-1 convolution of
``x[:, ::s, ::s, :]``. ``conv2d`` computes it so, whatever the channel
count, and the DP step's own convolutions of a layer's geometry take the
same input (``unit_stride``), so TensorFlow never builds those kernels; the
strided slice's gradient is a scatter (``StridedSliceGrad``).
"""

import keras
from keras import ops


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(d) for d in v)


def unit_stride(x, kernel_size, strides, data_format="channels_last"):
    """``(x', strides')``: the input and strides of an equal convolution that meets no faulty oneDNN kernel.

    A 1x1 convolution's input is subsampled by its strides, which become
    ``(1, 1)``; and along a spatial axis of static size 1 the stride becomes
    1 (one output position either way, with the same padding: "same" pads
    ``(k - 1) * dilation`` in total for any stride there, and "valid" needs
    ``k = 1``). Other convolutions come back unchanged. ``x`` is NHWC (NCHW
    with ``data_format="channels_first"``); the convolution of ``x'`` with
    ``strides'`` equals that of ``x`` with ``strides`` for either padding.
    """
    kernel_size, strides = _pair(kernel_size), _pair(strides)
    spatial = tuple(x.shape[2:4] if data_format == "channels_first" else x.shape[1:3])
    # oneDNN's bfloat16 backward-weights kernel of a strided 3x3 convolution over a 1x1 input leaves
    # the taps that see only padding unwritten: NaN or 1e36 at random (module docstring).
    strides = tuple(1 if size == 1 else s for size, s in zip(spatial, strides))
    if kernel_size != (1, 1) or strides == (1, 1):
        return x, strides
    sh, sw = strides
    if data_format == "channels_first":
        return x[:, :, ::sh, ::sw], (1, 1)
    return x[:, ::sh, ::sw, :], (1, 1)


def conv2d(x, kernel, *, strides=1, padding="valid", dilation_rate=1, data_format=None):
    """``keras.ops.conv`` of an HWIO ``kernel``, a strided 1x1 one as a stride-1 convolution of the subsampled input.

    Same arguments and result as ``keras.ops.conv`` for 2-D inputs (see the
    module docstring for why).
    """
    x, strides = unit_stride(x, tuple(kernel.shape)[:2], strides, data_format or keras.config.image_data_format())
    return ops.conv(x, kernel, strides=strides, padding=padding, dilation_rate=dilation_rate,
                    data_format=data_format)
