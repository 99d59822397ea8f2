"""Ghost clipping for weight-standardized convolutions: per-example kernel-gradient norms without the gradients.

A convolution's per-example kernel gradient is ``a = P^T dpre`` (``P`` the
example's input patches, ``dpre`` the gradients w.r.t. its output); its
squared norm is ``sum_{t,t'} (P P^T)_{tt'} (dpre dpre^T)_{tt'}`` (Goodfellow
2015; Li et al. 2022), which is cheaper than forming ``a`` when an example
has few output positions against a large kernel. For a WS convolution the
norm wanted is that of the raw kernel's gradient, through the
standardization's backward: ``ghost_ws_sq_norms``, from centred patch Grams
(``patch_gram``). ``conv_geometry`` and ``ghost_costs`` give the shapes and
the cost model by which ``ws_fast_path`` picks the ghost path per layer.
"""

import tensorflow as tf

from dp_zoo.models.conv_ops import unit_stride
from dp_zoo.models.ws_math import F32_UNIT_ROUNDOFF, fan_in_sum, ws_projection_terms

# Ghost norms for a layer when (Gram multiply-adds) < GHOST_COST_RATIO x
# (per-example kernel-gradient multiply-adds). Measured per layer (norms and
# clipped sum, batch 64, 2 CPU cores, WRN-16-4's stage-2/3 shapes at K=1, 2, 4):
# ghost was faster at cost ratios 0.10, 0.19 and 0.31 (0.54x, 0.77x, 0.81x of
# the loop's time) and slower from 0.38 on (1.23x at 0.38, 1.36x at 0.61).
GHOST_COST_RATIO = 0.35


def conv_geometry(layer, h, w):
    """``dict`` of a conv layer's kernel, strides, output size and (TF "SAME"/"VALID") padding for ``h x w`` input."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    if layer.padding == "same":
        ho, wo = -(-h // sh), -(-w // sw)
        ph, pw = max((ho - 1) * sh + kh - h, 0), max((wo - 1) * sw + kw - w, 0)
        pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    else:
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        pads = (0, 0, 0, 0)
    return {"kernel": (kh, kw), "strides": (sh, sw), "out": (ho, wo), "pads": pads, "in": (h, w),
            "padding": layer.padding.upper()}


def _gram_method(geom, views, cin):
    """``("patches" | "pixels", multiply-adds)`` of the cheaper way to form ``P P^T`` per example."""
    (kh, kw), (ho, wo), (h, w), pads = geom["kernel"], geom["out"], geom["in"], geom["pads"]
    t = views * ho * wo
    by_patches = t * t * kh * kw * cin
    n_pix = views * (h + pads[0] + pads[1]) * (w + pads[2] + pads[3])
    by_pixels = n_pix * n_pix * cin
    if kh * kw == 1 or by_patches <= by_pixels:
        return "patches", by_patches
    return "pixels", by_pixels


def ghost_costs(geom, views, cin, cout):
    """Per-example multiply-adds ``(ghost norms, per-example kernel gradient)`` of a conv layer."""
    (kh, kw), (ho, wo) = geom["kernel"], geom["out"]
    t = views * ho * wo
    return _gram_method(geom, views, cin)[1] + t * t * cout, t * kh * kw * cin * cout


def conv_patches(x, layer):
    """``[N, T, kh * kw * cin]`` input patches of a conv layer for ``x`` ``[N, H, W, cin]``.

    The patch vector is ordered as the HWIO kernel flattened over its first
    three axes, so ``conv(x, k)`` at position t is ``patches[:, t] @ k.reshape(-1, cout)``.
    """
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    p = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, 1, 1, 1],
                                 padding=layer.padding.upper())
    return tf.reshape(p, [tf.shape(x)[0], -1, kh * kw * x.shape[-1]])


def unfolded_kernel_rows(inputs, dpre, layer):
    """Per-example kernel gradients ``[B, kh, kw, cin, cout]`` from inputs and output gradients, without a loop.

    ``inputs`` ``[B, K, H, W, cin]`` and ``dpre`` ``[B, K, Ho, Wo, cout]``
    (the gradient w.r.t. the convolution's output, summed over an example's
    K views by the contraction): each example's input patches
    (``conv_patches``) contracted with its output gradients in one batched
    einsum, where ``tf.vectorized_map`` runs Conv2DBackpropFilter as a loop
    over examples (benchmarks/kernel_grad_paths.py). Memory: the patches,
    ``K * Ho * Wo * kh * kw * cin`` floats per example.
    """
    b, cout = tf.shape(inputs)[0], dpre.shape[-1]
    patches = conv_patches(tf.reshape(inputs, [-1, *inputs.shape[2:]]), layer)
    fan_in = patches.shape[-1]
    rows = tf.einsum("btf,bto->bfo", tf.reshape(patches, [b, -1, fan_in]), tf.reshape(dpre, [b, -1, cout]))
    kh, kw = layer.kernel_size
    return tf.reshape(rows, [b, kh, kw, inputs.shape[-1], cout])


def float32_projection(inputs, dpre, layer, ds, batch):
    """A ghost layer's ``sum(a * d * s)`` ``[B, cout]`` as ``sum_t dpre_t . conv(x, d * s)_t``, all float32.

    Under a mixed policy the forward pass (and with it the gain's gradient
    ``q``) rounds to bfloat16, 2^16 times float32's unit roundoff, which is
    all that ``ghost_ws_sq_norms`` allows for the error of this projection:
    a norm could then fall below the exact one. One batched float32
    convolution of the float32-cast ``inputs`` ``[B, K, H, W, cin]``
    recomputes it (``dpre``: the per-example output gradients, ``ds``: the
    gain-free standardized kernel).
    """
    geom = conv_geometry(layer, inputs.shape[2], inputs.shape[3])
    # Never a strided 1x1 convolution (oneDNN's kernels for it overrun; conv_ops).
    flat, strides = unit_stride(tf.reshape(inputs, [-1, *inputs.shape[2:]]), geom["kernel"], geom["strides"])
    pre = tf.nn.conv2d(flat, ds, strides=[1, *strides, 1], padding=geom["padding"])
    cout = ds.shape[-1]
    return tf.einsum("bto,bto->bo", tf.reshape(dpre, [batch, -1, cout]), tf.reshape(pre, [batch, -1, cout]))


def _tap_windows(t, geom, h_axes):
    """Per kernel tap, the strided window of ``t`` that the conv's outputs read there.

    ``h_axes``: the axes of ``t`` holding a padded height, each followed by
    its width axis; every such pair is sliced with the same tap offset (two
    pairs in a pixel Gram, whose rows and columns are both positions).
    """
    (kh, kw), (sh, sw), (ho, wo) = geom["kernel"], geom["strides"], geom["out"]
    parts = []
    for di in range(kh):
        for dj in range(kw):
            idx = [slice(None)] * len(t.shape)
            for i in h_axes:
                idx[i] = slice(di, di + sh * (ho - 1) + 1, sh)
                idx[i + 1] = slice(dj, dj + sw * (wo - 1) + 1, sw)
            parts.append(t[tuple(idx)])
    return parts


def _tap_sum(t, geom, h_axes):
    """Sum over the kernel's taps of the strided windows of ``t`` that the conv's outputs read (``_tap_windows``)."""
    parts = _tap_windows(t, geom, h_axes)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def patch_gram(x, layer, method=None, centred=False):
    """Per-example Gram ``P P^T`` ``[B, T, T]`` and row sums ``P 1`` ``[B, T]`` of a conv's input patches.

    ``x``: ``[B, K, H, W, cin]`` (K views of each example); ``P`` stacks the
    patches of all K views (T = K x output positions). Formed the cheaper way
    (``_gram_method``): from the patches themselves, or from the Gram of the
    padded input's pixels, ``(P P^T)_{tt'} = sum_taps (X X^T)_{p(t)+tap, p(t')+tap}``,
    which for a 3x3 kernel costs about (positions x cin) where the patches
    cost (positions x 9 cin) per pair. ``method`` ("patches" or "pixels")
    overrides the choice (tests).

    ``centred``: the Gram of the patches centred over the fan-in instead,
    ``P_c = P - (P 1 / n) 1^T``, formed without cancellation (what
    ``ghost_ws_sq_norms`` needs; ``P P^T - (P 1)(P 1)^T / n`` loses every
    digit when the patches are nearly constant, as in images with a large
    offset or near-constant windows). From the patches: they are centred
    before the product. From the pixels: with ``y`` each padded pixel's mean
    over channels and ``X' = X - y``, ``P = P' + Z + zeta 1^T``, where ``P'``
    are the patches of ``X'`` and ``Z`` (``[T, taps]``, the same for every
    channel) the windows of ``y`` less their means ``zeta`` over the taps.
    The rows of ``P'`` sum over channels to the windows ``E`` of
    ``e = sum_channels X'`` (zero but for rounding), those of ``Z`` over the
    taps to 0, so

        P_c P_c^T = P' P'^T + E Z^T + Z E^T + cin Z Z^T - A A^T / n,  A = E 1 + cin Z 1,

    none of them carrying the offsets (``P' P'^T`` is the pixel Gram of
    ``X'``, the rest ``[T, taps]`` products).
    """
    k, h, w, cin = x.shape[1:]
    geom = conv_geometry(layer, h, w)
    (ho, wo), pads = geom["out"], geom["pads"]
    t = k * ho * wo
    kh, kw = geom["kernel"]
    method = method or _gram_method(geom, k, cin)[0]
    if method == "patches":
        p = tf.reshape(conv_patches(tf.reshape(x, [-1, h, w, cin]), layer), [-1, t, kh * kw * cin])
        rows = tf.reduce_sum(p, axis=-1)
        if centred:
            p = p - tf.reduce_mean(p, axis=-1, keepdims=True)
        return tf.matmul(p, p, transpose_b=True), rows
    xp = tf.pad(x, [[0, 0], [0, 0], [pads[0], pads[1]], [pads[2], pads[3]], [0, 0]])
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    rows = tf.reshape(_tap_sum(tf.reduce_sum(xp, axis=-1), geom, (2,)), [-1, t])
    if centred:
        y = tf.reduce_mean(xp, axis=-1)
        xp = xp - y[..., None]
    flat = tf.reshape(xp, [-1, k * hp * wp, cin])
    gx = tf.reshape(tf.matmul(flat, flat, transpose_b=True), [-1, k, hp, wp, k, hp, wp])
    gram = tf.reshape(_tap_sum(gx, geom, (2, 5)), [-1, t, t])
    if not centred:
        return gram, rows

    def windows(v):  # [B, K, hp, wp] -> [B, T, taps]
        return tf.reshape(tf.stack(_tap_windows(v, geom, (2,)), axis=-1), [-1, t, kh * kw])

    z = windows(y)
    z = z - tf.reduce_mean(z, axis=-1, keepdims=True)
    e = windows(tf.reduce_sum(xp, axis=-1))
    cross = tf.matmul(e, z, transpose_b=True)
    ones = tf.reduce_sum(e, axis=-1) + cin * tf.reduce_sum(z, axis=-1)
    gram = (gram + cross + tf.transpose(cross, [0, 2, 1]) + cin * tf.matmul(z, z, transpose_b=True)
            - ones[:, :, None] * ones[:, None, :] / float(kh * kw * cin))
    return gram, rows


def ghost_ws_sq_norms(gram_p, row_sums, dpre, pa, ds, s, c, centred=False, sigma=None):
    """Per-example ``||dL/dw||^2`` of a WS conv's raw kernel from patch Grams and output gradients; never below it.

    ``gram_p``: ``[B, T, T]`` Gram ``P P^T`` of each example's input patches,
    or with ``centred`` that of the patches centred over the fan-in, and
    ``row_sums``: ``[B, T]``, ``P 1`` (``patch_gram``; T = views x output
    positions); ``dpre``: ``[B, T, cout]``, gradients w.r.t. the conv output
    before the gain; ``pa``: ``[B, cout]``, ``sum(a * d * s)`` with
    ``a = P^T dpre`` the gradient w.r.t. the gain-free standardized kernel (it
    equals gain times the gain's gradient); ``sigma``:
    ``ws_math.fan_in_sum(ds)`` if the caller has it. The result is the norm
    that ``ws_math.ws_kernel_sq_norms`` gives for ``a``, without forming ``a``: the
    mean of ``a_o`` over the fan-in is ``m_o = sum_t mu_t dpre_to``
    (``mu = P 1 / n``, the patch means), ``a_o - m_o = P_c^T dpre_o`` with
    ``P_c`` the centred patches, and
    ``sum_o s_o^2 ||a_o - m_o||^2 = sum_{t,t'} (P_c P_c^T)_{tt'} (G G^T)_{tt'}``
    with ``G = dpre * s`` (ghost clipping, Goodfellow 2015; Li et al. 2022);
    ``ws_math.ws_projection_terms`` takes off the projection onto ``d * s``.

    DP-SGD clips by this norm, so it must not fall below the exact one. The
    DP step passes the centred Gram (``patch_gram(..., centred=True)``);
    an uncentred one is centred here as ``P P^T - (P 1)(P 1)^T / n``, which
    cancels when the patches are nearly constant. ``pa`` comes from the
    forward pass, whose float32 convolution rounds each output by up to
    ``n u sum_i |P_ti| |(d s)_i|``; the part of that due to the patch means,
    ``n u |mu_t| ||d s||_1`` per position (large exactly where the input
    carries a large offset), bounds the error of ``pa`` passed on to
    ``ws_projection_terms``; the rest, and the rounding of the Gram
    contraction, are float32 rounding of the centred quantities themselves.
    """
    cout = dpre.shape[-1]
    n = ds.shape[0] * ds.shape[1] * ds.shape[2]
    s_ = tf.reshape(s, [cout])
    mu = row_sums / float(n)
    if not centred:
        gram_p = gram_p - row_sums[:, :, None] * mu[:, None, :]
    if sigma is None:
        sigma = fan_in_sum(ds)
    g = dpre * s_
    gram_g = tf.matmul(g, g, transpose_b=True)
    t_sq = tf.reduce_sum(gram_p * gram_g, axis=(1, 2))
    mean = tf.einsum("bt,bto->bo", mu, dpre)
    l1 = tf.reduce_sum(tf.abs(tf.reshape(ds, [-1, cout])), axis=0)
    pa_error = (n * F32_UNIT_ROUNDOFF) * l1 * tf.einsum("bt,bto->bo", tf.abs(mu), tf.abs(dpre))
    removed = ws_projection_terms(mean, pa, sigma, ds, c, n + dpre.shape[1], proj_error=pa_error)
    return tf.maximum(t_sq - tf.reduce_sum(removed * tf.square(s_), axis=1), 0.0)


def ghost_kernel_sums(entries, factor_for, mask):
    """``{id(entry): sum_b f_b a_b}`` of ghost layers, each one batched Conv2DBackpropFilter.

    ``factor_for(entry)``: the ``[B]`` clip factors of the entry's layer.

    ``sum_b f_b a_b`` is the batched kernel gradient of the conv for the
    output gradients ``f_b dpre_b``, as in a non-private step. Padding rows
    are zeroed first (``0 * nan`` is nan).
    """
    sums = {}
    keep5 = tf.cast(mask, tf.bool)[:, None, None, None, None]
    for e in entries:
        weighted = tf.where(keep5, e.rows * tf.reshape(factor_for(e), [-1, 1, 1, 1, 1]), 0.0)
        x = tf.where(keep5, e.inputs, 0.0)
        geom = conv_geometry(e.layer, x.shape[2], x.shape[3])
        # A strided 1x1 kernel's gradient as that of the subsampled input: oneDNN's kernel for
        # the strided one writes past its workspace with few input channels (conv_ops).
        flat, strides = unit_stride(tf.reshape(x, [-1, *x.shape[2:]]), geom["kernel"], geom["strides"])
        sums[id(e)] = tf.raw_ops.Conv2DBackpropFilter(
            input=flat, filter_sizes=tf.shape(e.ds), out_backprop=tf.reshape(weighted, [-1, *weighted.shape[2:]]),
            strides=[1, *strides, 1], padding=geom["padding"])
    return sums
