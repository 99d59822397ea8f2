"""The math of weight standardization (WS) that both the layers and the DP fast path use.

The standardized kernel and its closed-form backward (``standardize_kernel``,
``ws_geometry``, ``ws_backward``); per-example squared norms of the
raw-kernel gradient without forming it (``ws_kernel_norms``,
``ws_kernel_sq_norms``: outside XLA from ``ws_norm_bounds``, under XLA from
``ws_kernel_moments``, ``ws_projection_terms``, ``ws_sq_norms_from_moments``),
written so that rounding can only over-estimate a norm, never under-estimate
it (DP-SGD clips by these norms); and the exact reductions they rest on
(``fan_in_sum``, ``sum_of_squares``). How
``dp_zoo/dp/ws_fast_path.py`` combines them: docs/design.md, "The
weight-standardisation fast path".
"""

import keras
from keras import ops


def _standardize_reference(w, gain, eps, eps_mode):
    """Weight standardization written with plain ops (autodiff does the backward)."""
    fan_in = float(w.shape[0] * w.shape[1] * w.shape[2])
    mean = ops.mean(w, axis=(0, 1, 2), keepdims=True)
    var = ops.var(w, axis=(0, 1, 2), keepdims=True)
    if eps_mode == "timm":
        inv = ops.rsqrt(var + eps) / fan_in**0.5
    else:
        inv = ops.rsqrt(ops.maximum(var * fan_in, eps))
    return (w - mean) * inv * gain


def standardize_kernel(w, gain, *, eps, eps_mode="deepmind"):
    """``gain * (w - mean) * s(var)`` per output channel of an HWIO kernel.

    ``s = rsqrt(max(fan_in * var, eps))`` ("deepmind", also jax_privacy's
    WSConv2D) or ``rsqrt(var + eps) / sqrt(fan_in)`` ("timm"); mean and
    biased variance over the fan-in (axes 0, 1, 2).

    Under TensorFlow the backward pass is the closed form below instead of
    autodiff's. Per-example clipping runs this backward once per example
    (the cotangent differs per example even though the kernel does not), and
    autodiff's version makes about ten full passes over a ``[B, *kernel]``
    tensor (broadcasts, three partial gradients added up); the closed form
    makes about four. With ``d = w - mean``, ``a = u * gain`` for the
    incoming cotangent ``u``:

        dL/dw    = s * (a - mean(a)) - c * s^3 * sum(a * d) * d
        dL/dgain = s * sum(u * d)

    (sums over the fan-in, per output channel), where ``c = 1`` when ``s``
    depends on ``var`` and 0 where the deepmind eps floor is active. Tests
    compare it with autodiff of ``_standardize_reference``.
    """
    if keras.backend.backend() != "tensorflow":
        return _standardize_reference(w, gain, eps, eps_mode)
    import tensorflow as tf

    @tf.custom_gradient
    def ws(w, gain):
        ds, s, c = ws_geometry(w, eps=eps, eps_mode=eps_mode)

        def grad(u):
            return ws_backward(u, ds, s, c, gain), tf.reduce_sum(u * ds, axis=(-4, -3, -2))

        return ds * gain, grad

    # Plain tensors in: a variable read inside would make custom_gradient
    # ask for gradients w.r.t. variables as well.
    return ws(tf.convert_to_tensor(w), tf.convert_to_tensor(gain))


def ws_geometry(w, *, eps, eps_mode="deepmind"):
    """``(d * s, s, c)`` of an HWIO kernel (see ``standardize_kernel``).

    ``d * s`` is the standardized kernel before the gain; ``s`` and ``c``
    have shape ``[1, 1, 1, cout]``.
    """
    import tensorflow as tf

    fan_in = float(w.shape[0] * w.shape[1] * w.shape[2])
    d = w - tf.reduce_mean(w, axis=(0, 1, 2), keepdims=True)
    var = tf.reduce_mean(tf.square(d), axis=(0, 1, 2), keepdims=True)
    if eps_mode == "timm":
        s = tf.math.rsqrt(var + eps) / fan_in**0.5
        c = tf.ones_like(s)
    else:
        s = tf.math.rsqrt(tf.maximum(var * fan_in, eps))
        c = tf.cast(var * fan_in > eps, s.dtype)
    return d * s, s, c


def _in_xla_context():
    """True while tracing code that XLA compiles (``tf.function(jit_compile=True)``, a TPU replica)."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # internal modules moved: assume XLA, whose path runs everywhere
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def sum_of_squares(x, axis):
    """``sum(x^2)`` over ``axis``.

    On CPU/GPU a Euclidean-norm reduction squared: one pass over ``x``,
    measured 2-3x faster on CPU than square-then-sum (per-example kernel
    gradients of a 3x3x256x256 convolution, batch 64), which writes a
    temporary the size of ``x``. XLA (TPUs, ``jit_compile``) has no kernel
    for that op, and fuses square-then-sum into one pass anyway.
    """
    import tensorflow as tf

    if _in_xla_context():
        return tf.reduce_sum(tf.square(x), axis=axis)
    return tf.square(tf.math.reduce_euclidean_norm(x, axis=axis))


def ws_backward(u, ds, s, c, gain):
    """``dL/dw`` from ``u = dL/dw_hat`` (any leading batch axes), closed form."""
    import tensorflow as tf

    a = u * gain
    mean_a = tf.reduce_mean(a, axis=(-4, -3, -2), keepdims=True)
    proj = tf.reduce_sum(a * ds, axis=(-4, -3, -2), keepdims=True)
    return s * (a - mean_a) - (c * s) * proj * ds


# Unit roundoff of float32: each float32 operation rounds by at most this much relative to its result.
F32_UNIT_ROUNDOFF = 2.0**-24


def fan_in_sum(x):
    """``sum(x)`` over the fan-in (axes 0, 1, 2) of an HWIO tensor, ``[cout]``, to float32 rounding of the result.

    The standardized kernel's fan-in sum is a rounding residue (exactly 0
    before rounding), so a plain float32 sum of it is wrong in every digit;
    WS norms multiply it by the mean of the kernel gradient, which a large
    input offset makes huge. Outside XLA summed in float64 (CPU and GPU
    kernels have it; the fastest exact route there, 7 ms a step for all of
    WRN-16-4's kernels); under XLA (TPUs have no float64) pairwise in
    float32, each addition's rounding error recovered exactly (Knuth's
    TwoSum) and carried along.
    """
    import tensorflow as tf

    v = tf.reshape(x, [-1, x.shape[-1]])
    if not _in_xla_context():
        return tf.cast(tf.reduce_sum(tf.cast(v, tf.float64), axis=0), x.dtype)
    n = v.shape[0]
    size = 1 << max(n - 1, 0).bit_length()
    v = tf.pad(v, [[0, size - n], [0, 0]])
    err = tf.zeros_like(v)
    while v.shape[0] > 1:
        half = v.shape[0] // 2
        a, b = v[:half], v[half:]
        total = a + b
        b_part = total - a
        err = err[:half] + err[half:] + ((a - (total - b_part)) + (b - b_part))
        v = total
    return v[0] + err[0]


def ws_kernel_moments(a, ds, sigma=None):
    """``(||a - m||^2, (a - m) . (d * s), m)``, each ``[B, cout]``, with ``m`` the mean of ``a`` over the fan-in.

    ``a``: ``[B, kh, kw, cin, cout]`` per-example cotangents; ``sigma``:
    ``fan_in_sum(ds)`` if the caller has it. Centred before squaring: an
    ``a`` dominated by its mean (the kernel gradient of an input with a
    large offset, or of near-constant windows) would cancel catastrophically
    in ``sum(a^2) - sum(a)^2 / n``, and in ``sum(a * d * s)``, whose terms are
    as large as the mean while their sum is not. ``t = a - m0`` with ``m0``
    the float32 mean; the small mean ``tbar`` that ``t`` keeps (the rounding
    of ``m0``) is taken off in closed form: ``m = m0 + tbar``,
    ``||a - m||^2 = ||t||^2 - n tbar^2``, ``(a - m) . (d * s) = t . (d * s) - tbar sigma``.

    The DP step uses this under XLA only (``ws_kernel_norms``), where the
    subtraction fuses into the reductions; elsewhere ``t`` would be written
    out, a pass and a temporary the size of every example's kernel gradient.
    """
    import tensorflow as tf

    if sigma is None:
        sigma = fan_in_sum(ds)
    axes = (1, 2, 3)
    n = float(a.shape[1] * a.shape[2] * a.shape[3])
    m0 = tf.reduce_sum(a, axis=axes, keepdims=True) / n
    t = a - m0
    t_sq = sum_of_squares(t, axis=axes)
    t_ds, t_sum = tf.reduce_sum(t * ds, axis=axes), tf.reduce_sum(t, axis=axes)
    tbar = t_sum / n
    return t_sq - n * tf.square(tbar), t_ds - tbar * sigma, tf.reshape(m0, [-1, a.shape[-1]]) + tbar


def ws_projection_terms(mean, proj, sigma, ds, c, n_terms, proj_error=None):
    """Per channel, what the WS backward's projection off ``d * s`` removes from ``||a - mean||^2``, lowered by a bound.

    Per output channel (``[B, cout]`` each), ``ws_backward`` gives ``s`` times
    ``r = (a - m) - c k (d * s)`` with ``k = sum(a * d * s)``; so

        ||r||^2 = ||a - m||^2 - c (k^2 (2 - D) - 2 k m sigma)

    with ``D = ||d * s||^2`` and ``sigma`` its fan-in sum (both of the
    float32 kernel: ``sigma`` is not exactly 0, and a large mean makes
    ``m sigma`` count). Returns that ``c (...)`` less a bound on its rounding,
    so that ``||a - m||^2`` minus it is never below ``||r||^2``:

    - the cancellation when ``a - m`` lies along ``d * s`` (the difference is
      then tiny against both terms): ``4 n_terms u c k^2 (2 - D)`` covers
      relative errors of up to ``n_terms`` roundings ``u`` each in
      ``||a - m||^2``, ``k`` (twice) and ``D``; on ordinary cotangents
      (``k^2`` about ``||a - m||^2 / n``) it adds about ``4 u`` of the norm;
    - ``proj_error`` (optional): a bound ``|k - proj| <= proj_error`` when
      ``proj`` only approximates ``k``. The terms are concave in ``k``, so
      ``2 c proj_error |proj (2 - D) - m sigma|`` bounds what it can hide.

    ``mean``, ``proj``: ``m`` and ``k`` (or its approximation), ``[B, cout]``;
    ``sigma``: ``fan_in_sum(ds)``.
    """
    import tensorflow as tf

    cout = ds.shape[-1]
    flat = tf.reshape(ds, [-1, cout])
    two_minus_d = 2.0 - tf.reduce_sum(tf.square(flat), axis=0)
    c_ = tf.reshape(c, [cout])
    k, m_sigma = proj, mean * sigma
    removed = k * (k * two_minus_d - 2.0 * m_sigma)
    bound = (4.0 * n_terms * F32_UNIT_ROUNDOFF) * tf.square(k) * two_minus_d
    if proj_error is not None:
        bound += 2.0 * proj_error * tf.abs(k * two_minus_d - m_sigma)
    return c_ * (removed - bound)


def ws_sq_norms_from_moments(t_sq, t_ds, mean, ds, s, c, gain=None, sigma=None):
    """``||ws_backward(a, ds, s, c, gain or 1)||^2`` per example from ``ws_kernel_moments(a, ds)``.

    With ``gain`` (``[cout]``), ``a`` is w.r.t. ``d * s * gain`` and
    ``a * gain`` is meant: the moments scale by ``gain^2``, ``gain`` and
    ``gain``. ``k = sum(a * d * s)`` is ``t_ds + m sigma``, its terms no
    longer as large as the mean (see ``ws_projection_terms``). ``sigma``:
    ``fan_in_sum(ds)`` if the caller has it.
    """
    import tensorflow as tf

    cout = ds.shape[-1]
    n = ds.shape[0] * ds.shape[1] * ds.shape[2]
    if gain is not None:
        g = tf.reshape(gain, [cout])
        t_sq, t_ds, mean = t_sq * tf.square(g), t_ds * g, mean * g
    if sigma is None:
        sigma = fan_in_sum(ds)
    proj = t_ds + mean * sigma
    per_channel = tf.maximum(t_sq - ws_projection_terms(mean, proj, sigma, ds, c, n + 2), 0.0)
    return tf.reduce_sum(per_channel * tf.square(tf.reshape(s, [cout])), axis=1)


def ws_kernel_norms(a, ds, s, c, gain=None, sigma=None):
    """``(||ws_backward(a, ds, s, c, gain or 1)||^2`` ``[B]``, ``sum(a * d * s)`` ``[B, cout]``); norms never below.

    ``a``: ``[B, kh, kw, cin, cout]`` cotangents w.r.t. the gain-free
    standardized kernel ``d * s`` (the gain folded in), or, with ``gain``
    (``[cout]``), w.r.t. ``d * s * gain`` (then ``a * gain`` is meant; the
    second result, ``sum(a * d * s)`` for ``a`` as given, is then the gain's
    gradient). The projection is taken from ``a`` itself rather than from
    one formed elsewhere (e.g. the gain's gradient through the network),
    which carries the rounding of any large input offset.

    ``ws_backward`` is ``s`` times the projection of ``a`` off the constant
    direction and (when ``c = 1``) off ``d * s``. DP-SGD clips by this norm,
    so an under-estimate lets an example contribute more than the clip norm.
    Outside XLA each norm is a proven upper bound, from staged sums of ``a``
    and their rounding-error bounds, with a second, shifted pass only for
    examples whose cotangent is dominated by its mean
    (``ws_norm_bounds.ws_kernel_norm_bounds``). Under XLA (no float64 on
    TPUs, no data-dependent shapes) from the centred moments
    (``ws_kernel_moments``), which XLA fuses into one pass, and the one
    subtraction left bounded (``ws_projection_terms``).
    """
    if not _in_xla_context():
        from dp_zoo.models.ws_norm_bounds import ws_kernel_norm_bounds

        return ws_kernel_norm_bounds(a, ds, s, c, gain=gain)
    if sigma is None:
        sigma = fan_in_sum(ds)
    moments = ws_kernel_moments(a, ds, sigma)
    # sum(a * d * s) = (a - m) . (d * s) + m sigma.
    proj = moments[1] + moments[2] * sigma
    return ws_sq_norms_from_moments(*moments, ds, s, c, gain=gain, sigma=sigma), proj


def ws_kernel_sq_norms(a, ds, s, c, gain=None):
    """``||ws_backward(a, ds, s, c, gain or 1)||^2`` per leading index of ``a``, without forming it; never below it.

    The first result of ``ws_kernel_norms``.
    """
    return ws_kernel_norms(a, ds, s, c, gain=gain)[0]
