"""DP-SGD as small pure TensorFlow functions (DESIGN.md §4).

- ``per_example_grads``: vectorized per-example gradients of the mean loss
  over an example's K augmented views (augmentation multiplicity, De et al.
  2022 §3.1).
- ``clipped_grad_sum``: clip each example's gradient to global L2 norm C and
  sum; padding rows (mask 0) contribute exactly zero.
- ``add_noise``: N(0, sigma^2 C^2) added once per logical step.
- ``ema_decay`` / ``ema_update`` / ``polyak_update``: parameter averaging.

The engine (``engine.py``) composes them; each is tested alone.
"""

import keras
import tensorflow as tf

from dp_zoo.models.layers import (F32_UNIT_ROUNDOFF, fan_in_sum, standardized_kernel_override, sum_of_squares,
                                  ws_backward, ws_geometry, ws_kernel_moments, ws_projection_terms,
                                  ws_sq_norms_from_moments)


def _loss_views(model, params, non_trainable, views, label):
    """Mean cross-entropy over the K views ``[K, H, W, C]`` of one example."""
    logits, _ = model.stateless_call(params, non_trainable, views, training=True)
    labels = tf.fill([tf.shape(views)[0]], tf.cast(label, tf.int32))
    losses = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return tf.reduce_mean(losses)


def per_example_grads(model, images, labels, *, vectorized=True):
    """Per-example gradients of the mean loss over each example's views.

    Args:
      model: a built Keras model (logits out, no cross-example layers).
      images: ``[B, K, H, W, C]`` float32.
      labels: ``[B]`` int.
      vectorized: use ``tf.vectorized_map`` (fast); False uses ``tf.map_fn``
        (the reference the tests compare against).

    Returns:
      ``(grads, losses)``: a list aligned with ``model.trainable_variables``
      of ``[B, *var.shape]`` tensors, and the ``[B]`` per-example losses.
    """
    params = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def one(args):
        views, label = args
        with tf.GradientTape() as tape:
            tape.watch(params)
            # No kernels replaced; our layers just pick per-example-safe ops
            # (grouped convolutions as one convolution per group).
            with standardized_kernel_override({}):
                loss = _loss_views(model, params, non_trainable, views, label)
        return tape.gradient(loss, params), loss

    if vectorized:
        return tf.vectorized_map(one, (images, labels), fallback_to_while_loop=True)
    sig = ([tf.TensorSpec(p.shape, p.dtype) for p in params], tf.TensorSpec([], tf.float32))
    return tf.map_fn(one, (images, labels), fn_output_signature=sig)


def global_norms(grads):
    """Per-example global L2 norms ``[B]`` of a list of ``[B, ...]`` grads."""
    return tf.sqrt(tf.add_n(_sq_norms(grads)))


def _sq_norms(grads):
    # One single-pass reduction per tensor (see ``sum_of_squares``).
    return [sum_of_squares(tf.reshape(g, [tf.shape(g)[0], -1]), axis=1) for g in grads]


def clip_factors(norms, l2_clip):
    """``min(1, C / ||g||)``, written as ``C / max(||g||, C)`` (safe at 0)."""
    return l2_clip / tf.maximum(norms, l2_clip)


def clipped_grad_sum(model, images, labels, *, l2_clip, mask=None, vectorized=True, ghost="auto",
                     fold_gain="auto"):
    """Sum over examples of per-example gradients clipped to norm ``l2_clip``.

    Args:
      model: Keras model producing logits.
      images: ``[B, K, H, W, C]`` (K augmented views per example).
      labels: ``[B]``.
      l2_clip: clipping norm C (global over all trainable variables).
      mask: optional ``[B]``, 1 for real rows and 0 for padding rows; padding
        rows contribute exactly zero.
      vectorized: see ``per_example_grads``.
      ghost: which weight-standardized convolutions get their per-example
        kernel-gradient norms by ghost clipping (from the layer's input
        patches and output gradients, never forming the per-example kernel
        gradients; see ``ghost_ws_sq_norms``) rather than from vectorized
        per-example kernel gradients. ``"auto"``: those whose Gram matrices
        cost under ``GHOST_COST_RATIO`` times the multiply-adds of their
        per-example kernel gradients (few output positions times views
        against a large kernel: in WRN-16-4 at K=1, the 3x3 convolutions of
        the 8x8 stage); ``True``: every eligible one; ``False``: none. The
        result is the same either way (tests compare them).
      fold_gain: which of the other WS layers take per-example gradients
        w.r.t. the standardized kernel with their gain multiplied in (the
        gain's gradient then comes from the kernel's, sparing output-sized
        work) rather than w.r.t. the gain-free kernel and the gain.
        ``"auto"``: those whose fan-in is small against the output positions
        per example (``FOLD_COST_RATIO``; in WRN-16-4 at 32x32, the 32x32
        stage, and at K=4 the 16x16 one too); ``True``: all; ``False``:
        none. The result is the same either way.

    Returns:
      ``(grad_sum, norms)``: list aligned with ``model.trainable_variables``
      and the unclipped per-example norms ``[B]``.
    """
    if ghost not in ("auto", True, False):
        raise ValueError(f"ghost={ghost!r}: use 'auto', True or False")
    if fold_gain not in ("auto", True, False):
        raise ValueError(f"fold_gain={fold_gain!r}: use 'auto', True or False")
    ws = _ws_kernels(model) if vectorized else []
    if ws:
        return _clipped_grad_sum_ws(model, images, labels, ws, l2_clip=l2_clip, mask=mask, ghost=ghost,
                                    fold_gain=fold_gain)
    grads, _ = per_example_grads(model, images, labels, vectorized=vectorized)
    norms = global_norms(grads)
    mask = finite_rows(norms, mask)
    factors = _masked_clip_factors(norms, l2_clip, mask)
    return weighted_sum(grads, factors, mask, norms), norms


def finite_rows(norms, mask=None):
    """``mask`` with every row whose gradient norm is not finite set to 0.

    Such a row (a NaN or an overflow in one example's gradient) is then
    dropped exactly as a padding row is, and the step happens with its
    noise: one example can never turn a whole step non-finite and skipped,
    which would change what is released (docs/privacy.md). Dropping a row
    is a per-example function with sensitivity 0 <= C, so the guarantee
    is unchanged.
    """
    ok = tf.cast(tf.math.is_finite(norms), norms.dtype)
    return ok if mask is None else tf.cast(mask, norms.dtype) * ok


def _masked_clip_factors(norms, l2_clip, mask):
    factors = clip_factors(norms, tf.cast(l2_clip, norms.dtype))
    if mask is not None:
        factors = tf.where(tf.cast(mask, tf.bool), factors, tf.zeros_like(factors))
    return factors


def _ws_kernels(model):
    """``[(layer, kernel index, gain index, gain scale, eps, eps mode)]`` for WS layers whose kernel and gain train."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        parts = layer.ws_parts() if hasattr(layer, "ws_parts") else None
        if parts is None:
            continue
        kernel, gain, scale, eps, mode = parts
        if id(kernel) in index and id(gain) in index:
            out.append((layer, index[id(kernel)], index[id(gain)], scale, eps, mode))
    return out


class _WSTap:
    """Chooses, per WS layer, how its per-example gradients are formed; collects ghost layers' inputs and outputs.

    Layers call ``choose``/``record`` while ``one`` (the per-example
    function) is traced; shapes there are per example, ``[K, H, W, C]``.
    ``choices`` maps ``id(layer)`` to ``"plain"`` (per-example gradients
    w.r.t. the gain-free standardized kernel and the gain), ``"fold"`` (w.r.t.
    the standardized kernel with the gain in it) or ``"ghost"``.
    """

    listeners = []  # dicts that collect {layer name: choice} (``ws_gradient_paths``)

    def __init__(self, ghost, fold_gain, tape):
        self.ghost = ghost
        self.fold_gain = fold_gain
        self.tape = tape
        self.choices = {}
        self.entries = []  # (layer, inputs, pre) of ghost layers, in call order

    def choose(self, layer, inputs, ghost_ok):
        key = id(layer)
        if key in self.choices:
            if self.choices[key] == "ghost":
                raise NotImplementedError(
                    f"WS layer {layer.name!r} is called more than once per example; ghost clipping covers one "
                    "call. Pass ghost=False to clipped_grad_sum for this model.")
            return self.choices[key]
        if ghost_ok and self._wants_ghost(layer, inputs):
            choice = "ghost"
        elif self._wants_fold(layer, inputs):
            choice = "fold"
        else:
            choice = "plain"
        self.choices[key] = choice
        for paths in _WSTap.listeners:
            paths[layer.name] = choice
        return choice

    def _wants_ghost(self, layer, inputs):
        if self.ghost != "auto":
            return self.ghost
        geom = conv_geometry(layer, inputs.shape[1], inputs.shape[2])
        ghost_cost, direct_cost = ghost_costs(geom, inputs.shape[0], inputs.shape[-1], layer.filters)
        # The per-example kernel gradients run as a loop over examples, 1-2x
        # the time of the batched kernel gradient that the ghost path computes
        # once for the clipped sum; the Gram matrices must cost well under the
        # kernel gradients' multiply-adds to pay (see GHOST_COST_RATIO).
        return ghost_cost < GHOST_COST_RATIO * direct_cost

    def _wants_fold(self, layer, inputs):
        if self.fold_gain != "auto":
            return self.fold_gain
        # Unfolded, each example pays three passes over the layer's output
        # (the gain's multiply forward and backward, and the gain's gradient
        # as a product summed over positions); folded, one multiply-and-sum
        # over the kernel's fan-in for the gain's gradient (from the centred
        # moments that its norm needs anyway, ``layers.ws_kernel_moments``).
        # Output positions as for "same" padding (a cost estimate only).
        sh, sw = layer.strides if isinstance(layer.strides, tuple) else (layer.strides,) * 2
        positions = inputs.shape[0] * -(-inputs.shape[1] // sh) * -(-inputs.shape[2] // sw)
        kh, kw = layer.kernel_size if isinstance(layer.kernel_size, tuple) else (layer.kernel_size,) * 2
        fan_in = kh * kw * inputs.shape[-1] // layer.groups
        return fan_in < FOLD_COST_RATIO * positions

    def record(self, layer, inputs, pre):
        # Watched explicitly: where nothing upstream is watched (the stem's
        # input is data, its kernel is behind a stop-gradient) the tape would
        # not connect ``pre`` and its gradient would read as zero.
        self.tape.watch(pre)
        self.entries.append((layer, inputs, pre))


# Fold the gain into the kernel (``fold_gain="auto"``) when the kernel's
# fan-in is under FOLD_COST_RATIO x the output positions per example: three
# output-sized passes against about two fan-in-sized ones (see
# ``_WSTap._wants_fold``).
FOLD_COST_RATIO = 1.5


def ws_gradient_paths(model, views_shape, ghost="auto", fold_gain="auto"):
    """How ``clipped_grad_sum`` forms each WS layer's per-example gradients.

    Args:
      model: the model.
      views_shape: ``(K, H, W, C)`` of one example's views.
      ghost, fold_gain: as in ``clipped_grad_sum``.

    Returns:
      ``{layer name: "plain" | "fold" | "ghost"}`` in call order (traces the
      step once; nothing is computed). ``"plain"``: per-example gradients
      w.r.t. the gain-free standardized kernel and the gain; ``"fold"``:
      w.r.t. the standardized kernel with the gain in it; ``"ghost"``: norms
      from input patches and output gradients.
    """
    paths = {}
    x = tf.zeros((2,) + tuple(views_shape))
    _WSTap.listeners.append(paths)
    try:
        tf.function(lambda: clipped_grad_sum(model, x, tf.zeros([2], tf.int32), l2_clip=1.0, ghost=ghost,
                                             fold_gain=fold_gain)).get_concrete_function()
    finally:
        _WSTap.listeners.remove(paths)
    return paths


def ghost_layer_names(model, views_shape, ghost="auto"):
    """Names of the WS convolutions that ``clipped_grad_sum`` clips by ghost norms (see ``ws_gradient_paths``)."""
    return [name for name, path in ws_gradient_paths(model, views_shape, ghost).items() if path == "ghost"]


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
    ``layers.fan_in_sum(ds)`` if the caller has it. The result is the norm
    that ``ws_kernel_sq_norms`` gives for ``a``, without forming ``a``: the
    mean of ``a_o`` over the fan-in is ``m_o = sum_t mu_t dpre_to``
    (``mu = P 1 / n``, the patch means), ``a_o - m_o = P_c^T dpre_o`` with
    ``P_c`` the centred patches, and
    ``sum_o s_o^2 ||a_o - m_o||^2 = sum_{t,t'} (P_c P_c^T)_{tt'} (G G^T)_{tt'}``
    with ``G = dpre * s`` (ghost clipping, Goodfellow 2015; Li et al. 2022);
    ``layers.ws_projection_terms`` takes off the projection onto ``d * s``.

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


def _clipped_grad_sum_ws(model, images, labels, ws, *, l2_clip, mask, ghost="auto", fold_gain="auto"):
    """``clipped_grad_sum`` with per-example gradients taken w.r.t. standardized kernels.

    A WS layer computes ``conv(x, d * s) * g`` with ``d * s`` the gain-free
    standardized kernel and ``g`` its per-channel gain (times the layer's
    fixed scale). Neither depends on the example, so they are computed once
    per step and passed in as tensors (``layers.standardized_kernel_override``);
    per example we form only ``a = dL/d(d * s)`` and ``q = dL/dg`` (an
    activation-sized reduction). The standardization's backward is linear in
    the cotangent: the norm of each example's raw-kernel gradient comes from
    the centred moments of ``a`` (``layers.ws_kernel_moments``: centred
    sums, so that an ``a`` dominated by its mean, as large input offsets make
    it, cannot cancel into an under-estimate; ``layers.ws_kernel_sq_norms``),
    and the backward itself runs once, on the clipped sum ``sum_b f_b a_b``.
    Layers that ``fold_gain`` selects convolve with ``d * s * g`` instead:
    per example we form ``a' = dL/d(d * s * g)`` (so ``a = a' g``) and get
    ``q = sum(a' * d * s)`` from the same moments, sparing the output-sized
    work of the gain. WS layers that ``ghost`` selects (see
    ``clipped_grad_sum``) return, per example, their input and ``dL/dpre``
    instead of ``a``: norms by ``ghost_ws_sq_norms``, and ``sum_b f_b a_b``
    as one batched Conv2DBackpropFilter.
    Tests compare this with the generic path.
    """
    params = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    geometry, units, gains, gained = [], [], [], []
    for layer, ki, gi, scale, eps, mode in ws:
        ds, s, c = ws_geometry(params[ki], eps=eps, eps_mode=mode)
        g = params[gi] * scale
        geometry.append((ds, s, c, g, scale))
        units.append(ds)
        gains.append(g)
        gained.append(ds * g)
    replaced = {i for _, ki, gi, *_ in ws for i in (ki, gi)}
    others = [i for i in range(len(params)) if i not in replaced]
    overrides = {entry[0]: (ds, g, dsg) for entry, ds, g, dsg in zip(ws, units, gains, gained)}
    n_other = len(others)

    kinds = {}  # j -> "plain" | "fold" | "ghost", decided while ``one`` is traced

    def one(args):
        views, label = args
        with tf.GradientTape() as tape:
            tap = _WSTap(ghost, fold_gain, tape)
            tape.watch(params)
            tape.watch(units)
            tape.watch(gains)
            tape.watch(gained)
            with standardized_kernel_override(overrides, tap=tap):
                loss = _loss_views(model, params, non_trainable, views, label)
        tapped = {id(layer): (x, pre) for layer, x, pre in tap.entries}
        kinds.update({j: tap.choices.get(id(entry[0]), "plain") for j, entry in enumerate(ws)})
        wrt = [params[i] for i in others]
        for j, entry in enumerate(ws):
            # Per WS layer, the per-example gradient that goes on from here.
            if kinds[j] == "ghost":
                wrt.append(tapped[id(entry[0])][1])  # dL/dpre
            else:
                wrt.append(gained[j] if kinds[j] == "fold" else units[j])
        wrt += [gains[j] for j in range(len(ws)) if kinds[j] != "fold"]
        grads = tape.gradient(loss, wrt, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads + [tapped[id(ws[j][0])][0] for j in range(len(ws)) if kinds[j] == "ghost"]

    outs = tf.vectorized_map(one, (images, labels), fallback_to_while_loop=True)
    batch = tf.shape(images)[0]
    other_grads, per_layer = outs[:n_other], outs[n_other:n_other + len(ws)]
    rest = iter(outs[n_other + len(ws):])
    q_s = {j: next(rest) for j in range(len(ws)) if kinds[j] != "fold"}
    xs = {j: next(rest) for j in range(len(ws)) if kinds[j] == "ghost"}
    sq = _sq_norms(other_grads)
    kernel_rows, q_rows = {}, {}  # per-example tensors whose clipped sums are needed
    for j, (ds, s, c, g, scale) in enumerate(geometry):
        sigma = fan_in_sum(ds)
        if kinds[j] == "fold":
            moments = ws_kernel_moments(per_layer[j], ds, sigma)
            # dL/dg = sum(a' * d * s), from the centred moments: (a' - m) . (d * s) + m sigma.
            q = moments[1] + moments[2] * sigma
            sq.append(ws_sq_norms_from_moments(*moments, ds, s, c, gain=g, sigma=sigma))
            kernel_rows[j] = per_layer[j]
        else:
            q = tf.reshape(q_s[j], [batch, -1])
            if kinds[j] == "plain":
                moments = ws_kernel_moments(per_layer[j], ds, sigma)
                sq.append(ws_sq_norms_from_moments(*moments, ds, s, c, sigma=sigma))
                kernel_rows[j] = per_layer[j]
            else:
                # sum(a * d * s) = g * q: a = g * dL/dw_hat and q = sum(dL/dw_hat * d * s).
                pa = q * tf.reshape(g, [-1])
                dpre = per_layer[j]
                sq.append(ghost_ws_sq_norms(*patch_gram(xs[j], ws[j][0], centred=True),
                                            tf.reshape(dpre, [batch, -1, dpre.shape[-1]]), pa, ds, s, c,
                                            centred=True, sigma=sigma))
        q_rows[j] = q
        sq.append(tf.reduce_sum(tf.square(q), axis=1) * float(scale) ** 2)
    norms = tf.sqrt(tf.add_n(sq))
    mask = finite_rows(norms, mask)
    factors = _masked_clip_factors(norms, l2_clip, mask)
    k_idx, q_idx = sorted(kernel_rows), sorted(q_rows)
    summed = weighted_sum(list(other_grads) + [kernel_rows[j] for j in k_idx] + [q_rows[j] for j in q_idx],
                          factors, mask, norms)
    out = [None] * len(params)
    for i, gsum in zip(others, summed[:n_other]):
        out[i] = gsum
    kernel_sums = dict(zip(k_idx, summed[n_other:n_other + len(k_idx)]))
    q_sums = dict(zip(q_idx, summed[n_other + len(k_idx):]))
    keep = tf.cast(mask, tf.bool)
    keep5 = keep[:, None, None, None, None]
    for j, x in xs.items():
        # sum_b f_b a_b is the batched kernel gradient of the conv for the
        # output gradients f_b dpre_b: one Conv2DBackpropFilter, as in a
        # non-private step. Padding rows are zeroed first (0 * nan is nan).
        layer, dpre = ws[j][0], per_layer[j]
        weighted = tf.where(keep5, dpre * tf.reshape(factors, [-1, 1, 1, 1, 1]), 0.0)
        x = tf.where(keep5, x, 0.0)
        geom = conv_geometry(layer, x.shape[2], x.shape[3])
        kernel_sums[j] = tf.raw_ops.Conv2DBackpropFilter(
            input=tf.reshape(x, [-1, *x.shape[2:]]), filter_sizes=tf.shape(units[j]),
            out_backprop=tf.reshape(weighted, [-1, *weighted.shape[2:]]),
            strides=[1, *geom["strides"], 1], padding=geom["padding"])
    for j, ((layer, ki, gi, *_), (ds, s, c, g, scale)) in enumerate(zip(ws, geometry)):
        # A folded layer's sum is w.r.t. d * s * g: its WS backward takes the gain.
        out[ki] = ws_backward(kernel_sums[j], ds, s, c, g if kinds[j] == "fold" else 1.0)
        out[gi] = tf.reshape(q_sums[j] * scale, tf.shape(params[gi]))
    return out, norms


def weighted_sum(grads, factors, mask=None, norms=None):
    """``sum_b factors[b] * grads[b]`` for each ``[B, ...]`` tensor of ``grads``.

    A contraction over the batch axis (one matrix-vector product per
    variable, a single read of the per-example gradients) rather than a
    broadcast multiply followed by a reduction (a write and two reads).

    A padding row (mask 0) with a non-finite gradient must still contribute
    exactly zero, and ``0 * nan`` is nan: only when such a row exists (rare:
    padding rows are zeros) are those rows replaced by zeros first. A row's
    gradient is non-finite exactly when its norm is (``norms``, computed
    anyway; an overflowing norm of finite values only makes us zero a
    padding row that was zero-weighted already).
    """
    if mask is not None:
        pad = tf.logical_not(tf.cast(mask, tf.bool))
        if norms is None:
            norms = global_norms(grads)
        bad_padding = tf.reduce_any(tf.logical_and(pad, tf.logical_not(tf.math.is_finite(norms))))

        def zero_padding_rows():
            out = []
            for g in grads:
                keep = tf.reshape(tf.logical_not(pad), [-1] + [1] * (len(g.shape) - 1))
                out.append(tf.where(keep, g, tf.zeros_like(g)))
            return out

        grads = tf.cond(bad_padding, zero_padding_rows, lambda: [tf.identity(g) for g in grads])
    return [tf.tensordot(factors, g, axes=[[0], [0]]) for g in grads]


def mean_grad(model, images, labels, mask=None):
    """Non-private baseline: gradient of the mean loss over real rows."""
    with tf.GradientTape() as tape:
        b = tf.shape(images)[0]
        k = tf.shape(images)[1]
        flat = tf.reshape(images, tf.concat([[b * k], tf.shape(images)[2:]], 0))
        logits = model(flat, training=True)
        losses = keras.losses.sparse_categorical_crossentropy(
            tf.repeat(tf.cast(labels, tf.int32), k), logits, from_logits=True
        )
        losses = tf.reduce_mean(tf.reshape(losses, [b, k]), axis=1)
        if mask is None:
            mask = tf.ones([b])
        mask = tf.cast(mask, losses.dtype)
        total = tf.reduce_sum(losses * mask)
    return tape.gradient(total, model.trainable_variables), tf.reduce_sum(mask)


def add_noise(grad_sum, *, stddev, seed=None, generator=None):
    """Adds i.i.d. N(0, stddev^2) to every coordinate of ``grad_sum``.

    Args:
      grad_sum: list of tensors.
      stddev: sigma * C.
      seed: ``[2]`` int seed for stateless (reproducible) noise; or
      generator: a ``tf.random.Generator`` (e.g. non-deterministic state).

    Returns:
      The noisy list.
    """
    out = []
    for i, g in enumerate(grad_sum):
        if generator is not None:
            n = generator.normal(tf.shape(g), stddev=stddev, dtype=g.dtype)
        else:
            s = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), i)
            n = tf.random.stateless_normal(tf.shape(g), seed=s, stddev=stddev, dtype=g.dtype)
        out.append(g + n)
    return out


def noisy_normalized_sum(grad_sum, *, l2_clip, noise_multiplier, expected_batch_size,
                         seed=None, generator=None):
    """The privatized gradient of one logical step: ``(sum + N(0, sigma^2 C^2)) / B``.

    Called ONCE per logical step, after the clipped sums of every micro-batch
    and replica have been added up: the noise is calibrated to the
    sensitivity C of the whole logical sum, so adding it per micro-batch or
    per replica would add too much noise (and adding it to a partial sum that
    is later averaged would add too little).

    Args:
      grad_sum: list of tensors, the clipped per-example gradients summed over
        the logical batch.
      l2_clip: clipping norm C.
      noise_multiplier: sigma.
      expected_batch_size: B = q * N. Dividing by the EXPECTED size, not by
        the realised Poisson batch size, keeps the batch size (which depends
        on the data) out of the released update.
      seed, generator: the noise source, as in ``add_noise``.

    Returns:
      list of tensors aligned with ``grad_sum``.
    """
    noisy = add_noise(grad_sum, stddev=float(noise_multiplier) * float(l2_clip),
                      seed=seed, generator=generator)
    return [g / float(expected_batch_size) for g in noisy]


def add_weight_decay(update, params, weight_decay):
    """``update + weight_decay * params`` (L2 decay applied to the noisy update).

    Decay depends only on the current (already private) parameters, so it is
    added after the noise and costs no privacy.
    """
    if not weight_decay:
        return list(update)
    return [u + weight_decay * p for u, p in zip(update, params)]


def ema_decay(step, decay):
    """Warm-up EMA decay ``min(mu, (1 + t) / (10 + t))`` (DESIGN.md §4)."""
    t = tf.cast(step, tf.float32)
    return tf.minimum(tf.cast(decay, tf.float32), (1.0 + t) / (10.0 + t))


def ema_update(ema_vars, params, mu):
    """``ema <- mu * ema + (1 - mu) * params`` in place."""
    for e, p in zip(ema_vars, params):
        e.assign(mu * e + (1.0 - mu) * p)


def polyak_update(avg_vars, params, count):
    """Uniform running average: ``avg <- avg + (p - avg) / (count + 1)``."""
    c = tf.cast(count, tf.float32)
    for a, p in zip(avg_vars, params):
        a.assign(a + (p - a) / (c + 1.0))


def learning_rate_schedule(optim, total_steps):
    """A Keras LR schedule for an ``OptimConfig``."""
    lr = optim.learning_rate
    if optim.schedule == "constant":
        return lr
    if optim.schedule in ("cosine", "linear_warmup_cosine"):
        warm = optim.warmup_steps if optim.schedule == "linear_warmup_cosine" else 0
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warm else lr,
            decay_steps=max(1, total_steps - warm),
            warmup_target=lr if warm else None,
            warmup_steps=warm,
        )
    raise ValueError(
        f"Unknown learning-rate schedule {optim.schedule!r}; use 'constant', "
        "'cosine' or 'linear_warmup_cosine'."
    )


def make_optimizer(optim, total_steps):
    """The Keras optimizer for an ``OptimConfig`` (weight decay applied by the engine)."""
    lr = learning_rate_schedule(optim, total_steps)
    if optim.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"Unknown optimizer {optim.name!r}; use 'sgd' or 'adam'.")
