"""The layer side of the WS fast path: a context that hands WS layers the tensors to convolve with.

``dp_zoo/dp/ws_fast_path.py`` computes each WS layer's gain-free
standardized kernel and gain once per step and opens
``standardized_kernel_override``; inside it a layer reads them with
``overridden_kernel`` and ``override_choice`` (never its own variables) and,
on the ghost path, reports its input and pre-gain output with
``record_ghost``. The protocol a layer must follow is written down (and
enforced) in ``dp_zoo/dp/ws_fast_path.py`` and docs/design.md, "The
weight-standardisation fast path"; ``WSConv2D`` and ``ScaledWSConv2D`` (``dp_zoo/models/ws_conv.py``)
are the reference.
"""

import contextlib
import threading

from keras import ops

from dp_zoo.models.conv_ops import conv2d

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
    ``conv(inputs, kernel)``, times ``gain`` unless it is None. Both come
    in the inputs' dtype (bfloat16 under ``mixed_bfloat16``). ``ghost_ok``:
    whether the layer can take the ghost path (then it must ``record_ghost``).
    """
    tap = getattr(_KERNEL_OVERRIDE, "tap", None)
    choice = tap.choose(layer, inputs, ghost_ok) if tap is not None else "plain"
    # The override's tensors are float32 (computed from the float32
    # variables); under a mixed policy the layer computes in its inputs'
    # dtype, and the cast's gradient brings the cotangents back to float32.
    if choice == "fold":
        return ops.cast(override[2], inputs.dtype), None, choice
    return ops.cast(override[0], inputs.dtype), ops.cast(override[1], inputs.dtype), choice


def record_ghost(layer, inputs, pre):
    """Hands a ghost layer's input and pre-gain output (conv with the stop-gradient kernel) to the tap."""
    _KERNEL_OVERRIDE.tap.record(layer, inputs, pre)


def apply_gain(y, gain):
    """``y * gain``, or ``y`` where ``override_choice`` returned no gain (``"fold"``)."""
    return y if gain is None else y * gain


def in_per_example_context():
    """True inside ``standardized_kernel_override`` (an empty mapping included)."""
    return getattr(_KERNEL_OVERRIDE, "mapping", None) is not None


def grouped_conv(x, kernel, *, strides, padding, groups):
    """``conv_ops.conv2d`` with ``groups`` groups as one convolution per group."""
    if groups == 1:
        return conv2d(x, kernel, strides=strides, padding=padding)
    xs = ops.split(x, groups, axis=-1)
    ks = ops.split(kernel, groups, axis=-1)
    return ops.concatenate([conv2d(a, k, strides=strides, padding=padding) for a, k in zip(xs, ks)], axis=-1)
