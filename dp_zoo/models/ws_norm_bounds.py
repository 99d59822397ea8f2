"""Per-example norms of weight-standardized kernels' gradients, each a proven upper bound (outside XLA).

DP-SGD clips each example by the norm that ``clipped_grad_sum`` computes for
it, so a norm must never fall below the true one. For a WS layer, per
example and output channel, with ``a`` the cotangent w.r.t. the gain-free
standardized kernel ``d * s`` (``n`` fan-in terms), ``m`` its mean,
``k = sum(a * d * s)``, ``D = ||d * s||^2`` and ``sigma = sum(d * s)``
(``ws_math.ws_projection_terms``):

    ||dL/dw||^2 / s^2 = ||a - m||^2 - c (k^2 (2 - D) - 2 k m sigma),
    ||a - m||^2 = S2 - S1^2 / n   (S2 = sum(a^2), S1 = sum(a)).

``S2``, ``S1`` and ``k`` are summed here in stages whose rounding is bounded
for any order of the additions inside TensorFlow's kernels: float32 over
``l1`` (at most 9) contiguous slabs of the fan-in, float32 over ``l2`` (at
most 9) of the partial sums, the rest in float64 (``_staged_sums``). A sum of
``j`` float32 terms, each with at most one rounding before it, is within
``gamma(j) = j u / (1 - j u)`` (``u = 2^-24``) of the exact one relative to
the sum of the terms' magnitudes, so (docs/privacy.md, "Closed-form norms")

    |S2^ - S2| <= e_sq S2,   |S1^ - S1| <= e_lin sqrt(n S2),   |k^ - k| <= e_lin sqrt(S2 D)

with ``e_sq = gamma(l1 + l2 + 3)`` and ``e_lin = gamma(l1 + l2)`` (plus
float64's share), and every term above gets an interval that holds the
exact value (``_norm_interval``). Returned is the upper end: a norm that
rounding cannot have put below the exact one, however the input is
conditioned; the float32 ``S2 - S1^2 / n`` alone would cancel into an
under-estimate where ``a`` is dominated by its mean (large input offsets).

Where that happens the upper end is far above the exact norm, which would
over-clip the example. Where an example's interval for a layer is wider
than ``FAST_PATH_TOLERANCE`` times its upper end, that example's cotangent
is shifted by its computed mean and summed again (one more pass, for those
examples only): the shifted sums no longer cancel, and the shift's own
rounding (each ``a_i - m0`` within ``u`` of itself) widens the bounds by
``u``. On ordinary inputs no example needs the second pass, and the
norms cost three single-pass reductions of ``a`` plus float64 work on
arrays 1/80 of its size.

Floats below float32's smallest normal number may be flushed to zero (CPU
kernels run with flush-to-zero): each sum carries an absolute allowance for
that (``TINY``), negligible against any clip norm.
"""

import os

import tensorflow as tf

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
TINY = 2.0**-125  # twice float32's smallest normal number: what one flushed operation can lose, at most

# An example's interval for a layer's squared norm may be this wide, relative
# to its upper end, before its cotangent is summed again shifted by its mean
# (the norm then over-estimates by at most this much, relative, per layer).
FAST_PATH_TOLERANCE = 1e-5
# Widths below this (a squared norm) are accepted whatever the tolerance: an
# example whose gradient is zero needs no second pass.
ABSOLUTE_SLACK = 1e-24


def _gamma(j, u):
    """Bound on the relative error of a sum of ``j`` terms with one rounding each (Higham's gamma_j)."""
    return j * u / (1.0 - j * u)


def _split(n):
    """The length of a first summation stage over ``n`` terms: 9 (a 3x3 kernel's taps) or the largest divisor <= 8."""
    for size in (9, 8, 7, 6, 5, 4, 3, 2):
        if n % size == 0:
            return size
    return 1


def _float32_convs_exact():
    """Whether a float32 convolution here rounds to float32 (no TF32 on GPUs, no oneDNN bf16 math mode)."""
    if os.environ.get("TF_SET_ONEDNN_FPMATH_MODE"):
        return False
    if os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "strict").lower() != "strict":
        return False
    return not (tf.config.list_physical_devices("GPU") and tf.config.experimental.tensor_float_32_execution_enabled())


def _staged_sums(t, ds):
    """``(sum t^2, sum t, sum t * ds)`` over the fan-in, float64 ``[B, cout]``, and their error factors.

    ``t``: ``[B, *kernel]`` float32. Stage 1 reduces ``l1`` contiguous slabs
    of the flattened fan-in (one pass over ``t`` each for the squares, the
    sum and, by a depthwise convolution over the slabs, the products with
    ``ds``; TensorFlow writes no product out), stage 2 ``l2`` slabs of the
    partial sums in float32, stage 3 the rest in float64. Returns
    ``(s2, s1, p, e_sq, e_lin)``: ``|s2 - S2| <= e_sq S2`` and
    ``|s1 - S1| <= e_lin sum|t|``, ``|p - P| <= e_lin sum|t ds|``, besides
    flushed underflows (``TINY`` each).
    """
    cout = t.shape[-1]
    n = ds.shape[0] * ds.shape[1] * ds.shape[2]
    l1 = _split(n)
    m1 = n // l1
    l2 = _split(m1)
    m2 = m1 // l2
    width = m1 * cout
    x = tf.reshape(t, [-1, l1, width])
    # The Euclidean norm reduces the squares without writing them out; squaring it back
    # rounds twice more (its square root and the square), hence l1 + 3 below.
    sq = tf.square(tf.math.reduce_euclidean_norm(x, axis=1))
    s1 = tf.reduce_sum(x, axis=1)
    if _float32_convs_exact():
        p = tf.nn.depthwise_conv2d(tf.reshape(x, [-1, l1, 1, width]), tf.reshape(ds, [l1, 1, width, 1]),
                                   [1, 1, 1, 1], "VALID")
        p = tf.reshape(p, [-1, width])
    else:
        p = tf.reduce_sum(x * tf.reshape(ds, [1, l1, width]), axis=1)

    def rest(v):  # [B, m1 * cout] float32 -> [B, cout] float64
        if l2 > 1:
            v = tf.reduce_sum(tf.reshape(v, [-1, l2, m2 * cout]), axis=1)
        return tf.reduce_sum(tf.reshape(tf.cast(v, tf.float64), [-1, m2, cout]), axis=1)

    e_sq = _gamma(l1 + l2 + 3, U32) + _gamma(m2 + 2, U64)
    e_lin = _gamma(l1 + l2, U32) + _gamma(m2 + 2, U64)
    return rest(sq), rest(s1), rest(p), e_sq, e_lin


def _kernel_rows(ds, c):
    """``[6, cout]`` float64: bounds on the standardized kernel's ``D`` and ``sigma`` (``_upper_bound``), and ``c``.

    Rows: ``D_hi >= D``; ``(2 - D_hi)_+``; ``sigma`` as computed; the error a
    product with it may carry; ``|sigma| + its error``; ``c`` (0 or 1, so
    products with it are exact). Summed in float64: within ``gamma64(n + 1)``
    of ``D`` and ``gamma64(n) sum |ds|`` of ``sigma``.
    """
    n = ds.shape[0] * ds.shape[1] * ds.shape[2]
    flat = tf.cast(tf.reshape(ds, [n, ds.shape[-1]]), tf.float64)
    d_hi = tf.reduce_sum(tf.square(flat), axis=0) * (1.0 + _gamma(n + 1, U64))
    sigma = tf.reduce_sum(flat, axis=0)
    sigma_err = _gamma(n, U64) * tf.reduce_sum(tf.abs(flat), axis=0)
    return tf.stack([d_hi, tf.maximum(2.0 - d_hi, 0.0), sigma, sigma_err + 4.0 * U64 * tf.abs(sigma),
                     tf.abs(sigma) + sigma_err, tf.cast(tf.reshape(c, [-1]), tf.float64)])


_MATRIX = tf.TensorSpec([None, None], tf.float64)


# One graph function for every layer and both passes (its ~40 small operations are traced once per
# process, not once per layer and pass); grappler inlines the call.
@tf.function(input_signature=[_MATRIX] * 4 + [tf.TensorSpec([6, None], tf.float64), tf.TensorSpec([5], tf.float64)],
             autograph=False)
def _upper_bound(s2, s1, p, shift, kern, consts):
    """``(upper, loose, k, mean)``, float64 ``[B, cout]``: a bound ``upper >= ||r||^2 / s^2`` and what may loosen it.

    ``s2, s1, p``: ``_staged_sums`` of ``t = fl(a - shift)`` (``shift``
    ``[B, cout]``, zeros for ``t = a``); ``kern``: ``_kernel_rows``;
    ``consts``: ``(e_sq, e_lin, n, u_shift, tiny)``, ``u_shift`` the
    rounding of the shift (0 without one), ``tiny`` the allowance for
    flushed underflows. ``upper`` bounds
    ``||a - m||^2 - c (k^2 (2 - D) - 2 k m sigma)`` from above
    (docs/design.md, "Rounding bounds of the WS norms"); ``loose`` is the
    part of its width that summing ``a`` unshifted causes (what a shift by
    the mean takes away); ``k`` and ``mean`` are the computed ``sum(a ds)``
    and mean of ``a``.
    """
    d_hi, two_minus_d_lo, sigma, sigma_err, sigma_abs_hi, c = tf.unstack(kern)
    e_sq, e_lin, n, u_shift, tiny = tf.unstack(consts)
    # The exact sums of v = a - shift (fl(a_i - shift) = (a_i - shift)(1 + delta), |delta| <= u_shift):
    # S2 <= s2_hi; S1 and P within delta1 and delta_k of s1 and p.
    s2_hi = (s2 + tiny) / ((1.0 - e_sq) * tf.square(1.0 - u_shift))
    e1 = e_lin + 2.0 * u_shift
    delta1 = e1 * tf.sqrt(n * s2_hi) + tiny
    # ||a - m||^2 = S2 - S1^2 / n (shift-invariant), and S1^2 >= (|s1| - delta1)_+^2.
    centred_hi = s2_hi - tf.square(tf.maximum(tf.abs(s1) - delta1, 0.0)) / n
    loose = 2.0 * (s2_hi - s2) + 4.0 * delta1 * tf.abs(s1) / n
    # The mean and k = sum(a ds) = sum(v ds) + shift * sigma (each float64 operation within U64 of its result).
    mean = s1 / n + shift
    delta_m = delta1 / n + 2.0 * U64 * tf.abs(mean)
    k = p + shift * sigma
    delta_k = e1 * tf.sqrt(s2_hi * d_hi) + tiny + tf.abs(shift) * sigma_err + 2.0 * U64 * tf.abs(k)
    # f = k^2 (2 - D) - 2 k m sigma is at least f_lo over the box that holds (k, m, D, sigma).
    k_lo, k_hi = tf.maximum(tf.abs(k) - delta_k, 0.0), tf.abs(k) + delta_k
    cross = 2.0 * k * mean * sigma
    cross_err = 2.0 * k_hi * (tf.abs(mean) + delta_m) * sigma_abs_hi - tf.abs(cross)
    f_lo = tf.square(k_lo) * two_minus_d_lo - cross - cross_err
    # Every float64 operation above rounds by at most U64 relative to its result; 1e-13 of the
    # largest magnitudes that enter covers them all.
    slack = 1e-13 * (s2_hi + tf.square(k_hi) + tf.abs(cross) + cross_err)
    return tf.maximum(centred_hi - c * f_lo + slack, 0.0), loose, k, mean


def _bound(t, ds, kern, shift=None):
    """``_upper_bound`` of ``t = fl(a - shift)`` (``shift`` float32 ``[B, cout]``, or None for ``t = a``)."""
    s2, s1, p, e_sq, e_lin = _staged_sums(t, ds)
    n = ds.shape[0] * ds.shape[1] * ds.shape[2]
    # A shift rounds each a_i - shift by u, and a shifted value may flush to zero too.
    u_shift, tiny = (0.0, TINY * (n + 4)) if shift is None else (U32, 2.0 * TINY * (n + 4))
    shift = tf.zeros_like(s2) if shift is None else tf.cast(shift, tf.float64)
    consts = tf.constant([e_sq, e_lin, float(n), u_shift, tiny], tf.float64)
    return _upper_bound(s2, s1, p, shift, kern, consts)


def ws_kernel_norm_bounds(a, ds, s, c, gain=None):
    """``(squared norms [B], k [B, cout])`` of WS raw-kernel gradients: each norm at least the exact one.

    ``a``: ``[B, kh, kw, cin, cout]`` float32 cotangents w.r.t. the gain-free
    standardized kernel ``ds``, or with ``gain`` (``[cout]``) w.r.t.
    ``ds * gain`` (then ``a * gain`` is meant, as in ``ws_math.ws_backward``);
    ``s``, ``c``: ``ws_math.ws_geometry``'s. The squared norm is
    ``||ws_backward(a, ds, s, c, gain or 1)||^2`` rounded up; ``k`` is
    ``sum(a * ds)`` over the fan-in for ``a`` as given (the gain's gradient
    when ``a`` is w.r.t. the gained kernel), float32. Not for XLA (float64,
    a data-dependent second pass); ``ws_math.ws_kernel_norms`` dispatches.
    """
    if a.dtype != tf.float32 or ds.dtype != tf.float32:
        raise TypeError(f"ws_kernel_norm_bounds takes float32 tensors (its bounds are float32's), got {a.dtype}, "
                        f"{ds.dtype}: cast them first")
    cout = a.shape[-1]
    kern = _kernel_rows(ds, c)
    scale = tf.square(tf.cast(tf.reshape(s, [cout]), tf.float64))
    if gain is not None:
        scale *= tf.square(tf.cast(tf.reshape(gain, [cout]), tf.float64))
    upper, loose, k, mean = _bound(a, ds, kern)
    # Examples whose unshifted sums leave the bound loose (FAST_PATH_TOLERANCE) are summed again, shifted.
    again = (tf.reduce_sum(loose * scale, axis=1)
             > FAST_PATH_TOLERANCE * tf.reduce_sum(upper * scale, axis=1) + ABSOLUTE_SLACK)

    def shifted():
        rows = tf.where(again)
        shift = tf.cast(tf.gather_nd(mean, rows), tf.float32)
        refined = _bound(tf.gather_nd(a, rows) - tf.reshape(shift, [-1, 1, 1, 1, cout]), ds, kern, shift)
        return tf.tensor_scatter_nd_update(upper, rows, refined[0]), tf.tensor_scatter_nd_update(k, rows, refined[2])

    upper, k = tf.cond(tf.reduce_any(again), shifted, lambda: (upper, k))
    # float64 -> float32 rounds to nearest: one step up (and 1e-12 for the float64 sum) keeps it an upper bound.
    sq = tf.reduce_sum(upper * scale, axis=1) * ((1.0 + 1e-12) * (1.0 + 2.0**-22))
    return tf.cast(sq, tf.float32), tf.cast(k, tf.float32)
