"""Keras 3 layers shared by the model families.

WSConv2D (weight standardization, Qiao et al. 2019; as used by De et al.
2022's WideResNets), ScaledWSConv2D and the scaled activations of NF-ResNets
and NFNets (Brock et al. 2021), SkipInit gain, per-example StochasticDepth
and Squeeze-Excite. All math uses ``keras.ops``.
"""

import contextlib
import threading

import keras
from keras import ops

_KERNEL_OVERRIDE = threading.local()


@contextlib.contextmanager
def standardized_kernel_override(mapping, tap=None):
    """Within the context, WS layers convolve with given tensors (the layer side of the WS fast path).

    ``mapping``: ``{layer: (unit_kernel, channel_gain, gained_kernel)}``.
    Inside, such a layer computes ``conv(x, unit_kernel) * channel_gain``
    (+ bias) instead of ``conv(x, standardized_kernel())``: the same
    function, as the gain is per output channel. DP-SGD passes the gain-free
    standardized kernel, computed once per step, and the gain as tensors of
    their own, so that its per-example gradients are taken w.r.t. them
    rather than the raw kernel (the standardization's backward then runs
    once, on the clipped sum) and the gain's per-example gradient is an
    activation-sized reduction rather than a kernel-sized one.
    ``gained_kernel`` (``unit_kernel * channel_gain``) is convolved with
    instead, and the gain not applied, where the tap chooses ``"fold"``.
    Grouped convolutions run as one convolution per group inside the
    context (an empty mapping too), since TensorFlow's CPU kernels have no
    gradient for grouped convolutions under ``tf.vectorized_map``.

    ``tap`` (optional): an object with ``choose(layer, inputs, ghost_ok)``,
    returning ``"plain"``, ``"fold"`` or (only where ``ghost_ok``)
    ``"ghost"``, and ``record(layer, inputs, pre)``. ``"fold"``: the layer
    convolves with ``gained_kernel`` (one activation-sized multiply fewer
    forward and backward; the caller derives the gain's gradient from the
    kernel's). ``"ghost"`` (ungrouped, undilated ``WSConv2D`` only): the
    layer convolves with the unit kernel behind a stop-gradient and hands
    its input and its pre-gain output ``pre`` to the tap: the caller then
    takes gradients w.r.t. ``pre`` (activation-sized) instead of the kernel,
    and forms the kernel's per-example norms and clipped sum from ``inputs``
    and ``dL/dpre`` itself (ghost clipping).

    A layer honours the context through ``overridden_kernel``,
    ``override_choice`` and ``record_ghost``; what it must do is the
    protocol in ``dp_zoo/dp/ws_fast_path.py``, which raises for a layer
    that reads its own kernel or gain here.
    Thread-local, as MirroredStrategy traces each replica in its own thread.
    """
    previous = getattr(_KERNEL_OVERRIDE, "mapping", None), getattr(_KERNEL_OVERRIDE, "tap", None)
    _KERNEL_OVERRIDE.mapping = {id(layer): t for layer, t in mapping.items()}
    _KERNEL_OVERRIDE.tap = tap
    try:
        yield
    finally:
        _KERNEL_OVERRIDE.mapping, _KERNEL_OVERRIDE.tap = previous


def overridden_kernel(layer):
    """The layer's ``(unit_kernel, channel_gain, gained_kernel)`` under ``standardized_kernel_override``, else None."""
    mapping = getattr(_KERNEL_OVERRIDE, "mapping", None)
    return mapping.get(id(layer)) if mapping else None


def override_choice(layer, inputs, override, ghost_ok):
    """``(kernel, gain or None, choice)`` to convolve with, for ``override = overridden_kernel(layer)``.

    ``choice`` is the tap's (``"plain"`` without one); the layer computes
    ``conv(inputs, kernel)``, times ``gain`` unless it is None. ``ghost_ok``:
    whether the layer can take the ghost path (then it must ``record_ghost``).
    """
    tap = getattr(_KERNEL_OVERRIDE, "tap", None)
    choice = tap.choose(layer, inputs, ghost_ok) if tap is not None else "plain"
    if choice == "fold":
        return override[2], None, choice
    return override[0], override[1], choice


def record_ghost(layer, inputs, pre):
    """Hands a ghost layer's input and pre-gain output (conv with the stop-gradient kernel) to the tap."""
    _KERNEL_OVERRIDE.tap.record(layer, inputs, pre)


def _times_gain(y, gain):
    return y if gain is None else y * gain


def _per_example_context():
    """True inside ``standardized_kernel_override`` (an empty mapping included)."""
    return getattr(_KERNEL_OVERRIDE, "mapping", None) is not None


def _grouped_conv(x, kernel, *, strides, padding, groups):
    """``ops.conv`` with ``groups`` groups as one convolution per group."""
    if groups == 1:
        return ops.conv(x, kernel, strides=strides, padding=padding)
    xs = ops.split(x, groups, axis=-1)
    ks = ops.split(kernel, groups, axis=-1)
    return ops.concatenate([ops.conv(a, k, strides=strides, padding=padding) for a, k in zip(xs, ks)], axis=-1)


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


# ``ws_kernel_moments`` centres this many bytes of per-example cotangents at a time (see there).
MOMENT_CHUNK_BYTES = 8 << 20


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

    Outside XLA, ``t . (d * s)`` and ``sum(t)`` come from one depthwise
    convolution (one read of ``t``, no product written out), and the
    examples are taken ``MOMENT_CHUNK_BYTES`` at a time: TensorFlow's CPU
    kernels allocate each temporary afresh, and one the size of every
    example's kernel gradient costs more in page faults than the arithmetic
    (``t`` for WRN-16-4's 3x3x128x128 kernels at batch 64: 63 ms at once,
    38-43 ms in chunks, against 15 ms for the two reductions of an
    uncentred ``a``). XLA fuses the subtraction into the reductions.
    """
    import tensorflow as tf

    if sigma is None:
        sigma = fan_in_sum(ds)
    batch, cout = a.shape[0], a.shape[-1]
    n = a.shape[1] * a.shape[2] * a.shape[3]
    if _in_xla_context():
        return _centred_moments(a, n, sigma, ds=ds)
    # [n, 1, cout, 2]: per channel, the standardized kernel and ones.
    filt = tf.stack([tf.reshape(ds, [n, cout]), tf.ones([n, cout], ds.dtype)], axis=-1)[:, None]
    per = max(1, MOMENT_CHUNK_BYTES // (n * cout * a.dtype.size))
    if batch is None or per >= batch:
        return _centred_moments(a, n, sigma, filt=filt)
    sizes = [per] * (batch // per) + ([batch % per] if batch % per else [])
    parts = [_centred_moments(x, n, sigma, filt=filt) for x in tf.split(a, sizes)]
    return tuple(tf.concat(p, axis=0) for p in zip(*parts))


def _centred_moments(a, n, sigma, ds=None, filt=None):
    """``ws_kernel_moments`` of one chunk: products with ``ds`` by elementwise ops (XLA) or by ``filt`` (depthwise)."""
    import tensorflow as tf

    axes = (1, 2, 3)
    cout = a.shape[-1]
    m0 = tf.reduce_sum(a, axis=axes, keepdims=True) / float(n)
    t = a - m0
    t_sq = sum_of_squares(t, axis=axes)
    if filt is None:
        t_ds, t_sum = tf.reduce_sum(t * ds, axis=axes), tf.reduce_sum(t, axis=axes)
    else:
        lin = tf.nn.depthwise_conv2d(tf.reshape(t, [-1, n, 1, cout]), filt, [1, 1, 1, 1], "VALID")
        lin = tf.reshape(lin, [-1, cout, 2])
        t_ds, t_sum = lin[..., 0], lin[..., 1]
    tbar = t_sum / float(n)
    return t_sq - float(n) * tf.square(tbar), t_ds - tbar * sigma, tf.reshape(m0, [-1, cout]) + tbar


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


def ws_kernel_sq_norms(a, pa, ds, s, c, gain=None):
    """``||ws_backward(a, ds, s, c, gain or 1)||^2`` per leading index of ``a``, without forming it; never below it.

    ``a``: ``[B, kh, kw, cin, cout]`` cotangents w.r.t. the gain-free
    standardized kernel ``d * s`` (the gain folded in), or, with ``gain``
    (``[cout]``), w.r.t. ``d * s * gain`` (then ``a * gain`` is meant).
    ``pa`` (``[B, cout]``, ``sum(a * gain * d * s)`` as the caller has it) is
    not used: the projection is taken from the centred ``a`` instead, as one
    formed elsewhere (e.g. the gain's gradient through the network) carries
    the rounding of any large input offset.

    ``ws_backward`` is ``s`` times the projection of ``a`` off the constant
    direction and (when ``c = 1``) off ``d * s``. DP-SGD clips by this norm,
    so an under-estimate lets an example contribute more than the clip norm:
    the sums are centred (``ws_kernel_moments``) and the one subtraction left
    is bounded (``ws_projection_terms``). The result is within float32
    rounding of the exact norm (relative to the norm itself, however large
    the mean), over-estimating where ``a - mean`` lies along ``d * s``.
    """
    del pa
    sigma = fan_in_sum(ds)
    return ws_sq_norms_from_moments(*ws_kernel_moments(a, ds, sigma), ds, s, c, gain=gain, sigma=sigma)


@keras.saving.register_keras_serializable(package="dp_zoo")
class WSConv2D(keras.layers.Conv2D):
    """Conv2D with weight standardization (Qiao et al. 2019).

    As in jax_privacy's WideResNets (De et al. 2022): each output channel's
    kernel is standardized over its fan-in (kh * kw * cin) and scaled by a
    learnable gain,

        w_hat = gain * (w - mean(w)) / sqrt(max(fan_in * var(w), eps)),

    so the standardized kernel has per-output-channel mean 0 and variance
    1 / fan_in. Standardizing in the forward pass makes each example's
    computation independent of the others (no batch statistics), which
    per-example gradient clipping needs.

    The formula, eps and initialisation follow jax_privacy's
    ``experiments/image_classification/models/common.py`` (``WSConv2D``):
    raw kernel ~ N(0, 1/fan_in) (untruncated), gain initialised to 1, bias
    to 0, "same" padding. The raw kernel's scale still matters under WS: the
    gradient w.r.t. the raw kernel scales like 1/std(w), so it sets how
    large each example's gradient is before clipping.

    Args:
      filters: number of output channels.
      kernel_size: int or (kh, kw).
      eps: floor on ``fan_in * var`` (1e-4, jax_privacy's value); keeps a
        constant kernel from dividing by zero.
      **kwargs: as ``keras.layers.Conv2D`` (strides, padding, use_bias, ...).
    """

    def __init__(self, filters, kernel_size, eps=1e-4, **kwargs):
        kwargs.setdefault("padding", "same")
        kwargs.setdefault(
            "kernel_initializer",
            keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
        )
        super().__init__(filters, kernel_size, **kwargs)
        self.eps = eps

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer="ones", trainable=True
        )

    def standardized_kernel(self):
        """The kernel actually convolved with (mean 0, variance 1/fan_in)."""
        return standardize_kernel(self.kernel, self.gain, eps=self.eps, eps_mode="deepmind")

    def ws_parts(self):
        """``(kernel, gain, gain_scale, eps, eps_mode)``: w_hat = standardize(kernel, gain * gain_scale).

        None when the layer cannot run under ``standardized_kernel_override``
        (channels-first data, or groups with dilation).
        """
        if self.data_format != "channels_last" or (self.groups > 1 and max(self.dilation_rate) > 1):
            return None
        return self.kernel, self.gain, 1.0, self.eps, "deepmind"

    def call(self, inputs):
        override = overridden_kernel(self)
        if override is None:
            out = ops.conv(inputs, self.standardized_kernel(), strides=self.strides, padding=self.padding,
                           dilation_rate=self.dilation_rate, data_format=self.data_format)
        else:
            ghost_ok = self.groups == 1 and self.data_format == "channels_last" and max(self.dilation_rate) == 1
            kernel, gain, choice = override_choice(self, inputs, override, ghost_ok)
            if self.groups > 1:
                out = _grouped_conv(inputs, kernel, strides=self.strides, padding=self.padding, groups=self.groups)
            else:
                out = ops.conv(inputs, ops.stop_gradient(kernel) if choice == "ghost" else kernel,
                               strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
                               data_format=self.data_format)
            if choice == "ghost":
                record_ghost(self, inputs, out)
            out = _times_gain(out, gain)
        if self.use_bias:
            out = out + self.bias
        if self.activation is not None:
            out = self.activation(out)
        return out

    # Conv2D saves only kernel and bias; the gain must travel too.
    def save_own_variables(self, store):
        if not self.built:
            return
        for i, v in enumerate(self._own_variables()):
            store[str(i)] = v

    def load_own_variables(self, store):
        if not self.built:
            return
        own = self._own_variables()
        if len(store.keys()) != len(own):
            raise ValueError(
                f"Layer {self.name!r} expected {len(own)} variables "
                f"(kernel, [bias], gain), found {len(store.keys())} in the file."
            )
        for i, v in enumerate(own):
            v.assign(store[str(i)])

    def _own_variables(self):
        return [self.kernel] + ([self.bias] if self.use_bias else []) + [self.gain]

    def get_config(self):
        config = super().get_config()
        config["eps"] = self.eps
        return config


# --- Normalizer-free networks (Brock et al. 2021) --------------------------

# Gains that make each activation variance-preserving for unit Gaussian
# inputs (Brock et al. 2021a, "Characterizing signal propagation to close the
# performance gap in unnormalized ResNets"; DeepMind's nfnets constants).
NONLINEARITY_GAMMA = {
    "relu": 1.7139588594436646,
    "gelu": 1.7015043497085571,
    # DeepMind's NFNets use jax.nn.gelu, whose default is the tanh
    # approximation; their gain constant is the same to the digits given.
    "gelu_tanh": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "identity": 1.0,
}


def _activation(name, x):
    if name == "relu":
        return ops.relu(x)
    if name == "gelu":
        return ops.gelu(x, approximate=False)  # exact erf GELU, as nn.GELU
    if name == "gelu_tanh":
        return ops.gelu(x, approximate=True)  # as jax.nn.gelu's default
    if name == "silu":
        return ops.silu(x)
    if name == "identity":
        return x
    raise ValueError(f"Unknown activation {name!r}; use one of {sorted(NONLINEARITY_GAMMA)}.")


@keras.saving.register_keras_serializable(package="dp_zoo")
class ScaledActivation(keras.layers.Layer):
    """``gamma * act(x)``; ``gamma`` defaults to the activation's NF gain.

    Args:
      activation: "relu", "gelu" (exact), "gelu_tanh" (tanh approximation),
        "silu" or "identity".
      gamma: output scale; None uses ``NONLINEARITY_GAMMA[activation]``.
    """

    def __init__(self, activation="relu", gamma=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in NONLINEARITY_GAMMA:
            raise ValueError(f"Unknown activation {activation!r}; use one of {sorted(NONLINEARITY_GAMMA)}.")
        self.activation = activation
        self.gamma = float(NONLINEARITY_GAMMA[activation] if gamma is None else gamma)

    def call(self, x):
        y = _activation(self.activation, x)
        return y if self.gamma == 1.0 else y * self.gamma

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="dp_zoo")
class ScaledWSConv2D(keras.layers.Layer):
    """Conv2D with scaled weight standardization (NF-ResNets, NFNets).

    ``w_hat = gain * gamma * (w - mean) / sqrt(fan_in * var)``, mean and
    (biased) variance per output channel over its fan-in. Where epsilon
    enters is a convention: ``eps_mode="deepmind"`` (DeepMind's nfnets and
    jax_privacy) uses ``rsqrt(max(fan_in * var, eps))``; ``eps_mode="timm"``
    (timm's ``ScaledStdConv2d``) uses ``rsqrt(var + eps) / sqrt(fan_in)``. Standardization happens per forward pass, so there
    are no batch statistics (per-example clipping stays exact).

    Args:
      filters: output channels.
      kernel_size: int.
      strides: int.
      padding: "same" (TensorFlow SAME, as DeepMind's NFNets) or an int of
        symmetric zero padding (PyTorch style, as timm's NF-ResNets), or
        "valid".
      groups: grouped convolution (input and output channels divisible).
      use_bias: add a bias.
      gamma: constant scale (the activation gain when it is folded into the
        convolution).
      eps: variance floor.
      gain_init: initial value of the learnable per-channel gain.
      eps_mode: "deepmind" or "timm" (see above).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", groups=1, use_bias=True,
                 gamma=1.0, eps=1e-4, gain_init=1.0, eps_mode="deepmind", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.gain_init = float(gain_init)
        if eps_mode not in ("deepmind", "timm"):
            raise ValueError(f"eps_mode must be 'deepmind' or 'timm', got {eps_mode!r}.")
        self.eps_mode = eps_mode

    def build(self, input_shape):
        cin = int(input_shape[-1])
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(
                f"{self.name}: groups={self.groups} must divide input channels {cin} and filters {self.filters}."
            )
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, cin // self.groups, self.filters),
            initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
        )
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer=keras.initializers.Constant(self.gain_init)
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        )

    def standardized_kernel(self):
        """The kernel actually convolved with."""
        return standardize_kernel(self.kernel, self.gain * self.gamma, eps=self.eps, eps_mode=self.eps_mode)

    def ws_parts(self):
        """``(kernel, gain, gain_scale, eps, eps_mode)``: w_hat = standardize(kernel, gain * gain_scale)."""
        return self.kernel, self.gain, self.gamma, self.eps, self.eps_mode

    def call(self, x):
        pad = self.padding
        if isinstance(pad, int):
            if pad:
                x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            pad = "valid"
        override = overridden_kernel(self)
        if override is None and self.groups > 1 and _per_example_context():
            y = _grouped_conv(x, self.standardized_kernel(), strides=self.strides, padding=pad, groups=self.groups)
        elif override is None:
            y = ops.conv(x, self.standardized_kernel(), strides=self.strides, padding=pad)
        else:
            kernel, gain, _ = override_choice(self, x, override, ghost_ok=False)
            y = _times_gain(_grouped_conv(x, kernel, strides=self.strides, padding=pad, groups=self.groups), gain)
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        k, s = self.kernel_size, self.strides

        def size(d):
            if d is None:
                return None
            if self.padding == "same":
                return -(-d // s)
            p = self.padding if isinstance(self.padding, int) else 0
            return (d + 2 * p - k) // s + 1

        return (n, size(h), size(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "groups": self.groups,
                "use_bias": self.use_bias, "gamma": self.gamma, "eps": self.eps,
                "gain_init": self.gain_init, "eps_mode": self.eps_mode}


@keras.saving.register_keras_serializable(package="dp_zoo")
class SkipInitGain(keras.layers.Layer):
    """Multiplies by a learnable scalar initialised to ``init`` (0: SkipInit, De & Smith 2020).

    With ``init=0`` each residual branch starts switched off, so the network
    starts as (nearly) the identity of its shortcuts.

    Args:
      init: the scalar's initial value.
      shape: the gain variable's shape, that of the checkpoints the family
        converts from: ``()`` (DeepMind's NFNets, timm) or ``(1,)``
        (jax_privacy's WideResNets). The product is the same.
      **kwargs: as ``keras.layers.Layer``.
    """

    def __init__(self, init=0.0, shape=(), **kwargs):
        super().__init__(**kwargs)
        self.init = float(init)
        self.gain_shape = tuple(int(d) for d in shape)
        if self.gain_shape not in ((), (1,)):
            raise ValueError(f"SkipInitGain holds one scalar: shape () or (1,), got {self.gain_shape}.")

    def build(self, input_shape):
        self.gain = self.add_weight(name="gain", shape=self.gain_shape,
                                    initializer=keras.initializers.Constant(self.init))

    def call(self, x):
        return x * ops.cast(self.gain, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init": self.init, "shape": list(self.gain_shape)}


@keras.saving.register_keras_serializable(package="dp_zoo")
class StochasticDepth(keras.layers.Layer):
    """Drop-path with a per-example decision (Huang et al. 2016).

    The keep/drop decision has shape ``[batch, 1, 1, 1]`` taken from the
    input's own batch dimension, so it stays per example when the forward
    pass is vectorized per example (a batch of one per call). Identity at
    inference; kept paths are rescaled by ``1 / keep_prob``.

    Args:
      rate: drop probability.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # A stateful op on purpose: under tf.vectorized_map (per-example
            # gradients) pfor draws it independently for every example,
            # whereas a stateless draw from one seed would repeat the same
            # decision for the whole batch.
            u = tf.random.uniform(shape, dtype=x.dtype)
        else:
            u = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.cast(u < keep, x.dtype)
        return x * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="dp_zoo")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation as in NFNets: ``gain * x * sigmoid(fc2(relu(fc1(mean(x)))))``.

    Args:
      reduced_channels: width of the bottleneck.
      gain: output scale (2.0 in NFNets, which keeps the signal variance).
    """

    def __init__(self, reduced_channels, gain=2.0, **kwargs):
        super().__init__(**kwargs)
        self.reduced_channels = int(reduced_channels)
        self.gain_value = float(gain)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.fc1 = keras.layers.Conv2D(self.reduced_channels, 1, name="fc1")
        self.fc2 = keras.layers.Conv2D(c, 1, name="fc2")
        self.fc1.build((None, 1, 1, c))
        self.fc2.build((None, 1, 1, self.reduced_channels))

    def call(self, x):
        s = ops.mean(x, axis=(1, 2), keepdims=True)
        s = ops.sigmoid(self.fc2(ops.relu(self.fc1(s))))
        return x * s * self.gain_value

    def get_config(self):
        return {**super().get_config(), "reduced_channels": self.reduced_channels, "gain": self.gain_value}
