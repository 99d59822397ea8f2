"""The clipped gradient sum for models with weight-standardized (WS) layers, and the protocol such a layer follows.

The math. A WS layer computes ``conv(x, d * s) * g`` with ``d * s`` the
gain-free standardized kernel and ``g`` its per-channel gain (times the
layer's fixed scale). Neither depends on the example, so they are computed
once per step and handed to the layer as tensors
(``ws_override.standardized_kernel_override``); per example we form only
``a = dL/d(d * s)`` and ``q = dL/dg`` (an activation-sized reduction). The
standardization's backward is linear in the cotangent: the norm of each
example's raw-kernel gradient comes from sums over ``a``
(``ws_math.ws_kernel_norms``: outside XLA each norm a proven upper bound,
so that an ``a`` dominated by its mean, as large input offsets make it,
cannot cancel into an under-estimate), and the backward itself runs once,
on the clipped sum ``sum_b f_b a_b``. Layers that ``fold_gain`` selects
convolve with ``d * s * g`` instead: per example we form
``a' = dL/d(d * s * g)`` (so ``a = a' g``) and get ``q = sum(a' * d * s)``
from the same sums, sparing the output-sized work of the gain. Layers
that ``ghost`` selects return, per example, their input and ``dL/dpre``
instead of ``a``: norms by ``ghost.ghost_ws_sq_norms``, and
``sum_b f_b a_b`` as one batched Conv2DBackpropFilter. Layers that
``unfold`` selects (by default the small ones, ``ws_paths.UNFOLD_MAX_MACS``) return
the same two and get ``a`` from them as input patches contracted with
``dL/dpre`` in one einsum (``ghost.unfolded_kernel_rows``), then go on as
plain layers. A layer that ``"auto"`` put on either of these tapped paths
and that the model calls twice is traced again on the per-example loop.
Tests compare every path with the naive per-example loop.

The protocol (what a layer must do to take this path; ``WSConv2D`` and
``ScaledWSConv2D`` in ``dp_zoo/models/ws_conv.py`` are the reference):

1. ``ws_parts()`` returns ``(kernel, gain, gain_scale, eps, eps_mode)``:
   its raw kernel variable (HWIO), its per-output-channel gain variable and
   constants such that the kernel it convolves with is
   ``ws_math.standardize_kernel(kernel, gain * gain_scale, eps=eps,
   eps_mode=eps_mode)``; or None where the layer cannot honour the rest
   (its variables are then differentiated per example like any other's).
   The path applies when both variables train.
2. In ``call``, where ``ws_override.overridden_kernel(self)`` is not None,
   the layer gets ``kernel, gain, choice = ws_override.override_choice(self,
   inputs, override, ghost_ok)`` and computes ``conv(inputs, kernel)``, times
   ``gain`` unless it is None (``"fold"``: the kernel has the gain in it;
   ``ws_override.apply_gain``), plus its bias: the same function as without
   the override, and WITHOUT reading its own kernel or gain variables.
3. ``ghost_ok`` may be True only for an ungrouped, undilated, channels-last
   convolution whose ``kernel_size``, ``strides`` (pairs) and ``padding``
   (``"same"``/``"valid"``) describe it (``ghost.conv_geometry``). On
   ``"ghost"`` (the unfold path's answer too) it convolves with
   ``stop_gradient(kernel)`` and hands its input and pre-gain output to
   ``ws_override.record_ghost``, once per example.
4. It has ``kernel_size``, ``strides`` (ints or pairs) and ``groups``, and
   a ghost-capable layer ``filters``: the cost model that picks each
   layer's path reads them.

Breaking 2 or 3 would silently lose gradient (the path differentiates
w.r.t. the override's tensors only), so it raises ``TypeError`` when the
step is traced: a layer whose output depends on its own kernel or gain
variables under the override, or a ghost layer that recorded nothing. That
the layer computes the same function (the rest of 2) is for its own tests
to show against the naive loop.
"""

import tensorflow as tf

from dp_zoo.dp import clipping_modes
from dp_zoo.dp.ghost import float32_projection, ghost_kernel_sums, ghost_ws_sq_norms, patch_gram, unfolded_kernel_rows
from dp_zoo.dp.per_example import finite_rows, masked_clip_factors, sq_norms, views_loss, weighted_sum
from dp_zoo.dp.ws_paths import TAPPED, WSTap, check_path_options
from dp_zoo.models.ws_math import fan_in_sum, ws_backward, ws_geometry, ws_kernel_norms
from dp_zoo.models.ws_override import standardized_kernel_override

_PROTOCOL = "the WS fast-path protocol in dp_zoo/dp/ws_fast_path.py"


def ws_kernels(model):
    """``[(layer, kernel index, gain index, gain scale, eps, eps mode)]`` for WS layers whose kernel and gain train.

    Indices are into ``model.trainable_variables``; a layer is a WS layer
    when its ``ws_parts()`` is not None (protocol, item 1).
    """
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


def ws_gradient_paths(model, views_shape, ghost="auto", fold_gain="auto", unfold="auto"):
    """How ``clipped_grad_sum`` forms each WS layer's per-example gradients.

    Args:
      model: the model.
      views_shape: ``(K, H, W, C)`` of one example's views.
      ghost, fold_gain, unfold: as in ``clipped_grad_sum``.

    Returns:
      ``{layer name: "plain" | "fold" | "ghost" | "unfold"}`` in call order (traces the
      step once; nothing is computed). ``"plain"``: per-example gradients
      w.r.t. the gain-free standardized kernel and the gain; ``"fold"``:
      w.r.t. the standardized kernel with the gain in it; ``"ghost"``: norms
      from input patches and output gradients; ``"unfold"``: per-example
      kernel gradients from input patches and output gradients.
    """
    check_path_options(ghost, fold_gain, unfold)
    paths = {}
    ws = ws_kernels(model)
    if not ws:
        return paths
    x = tf.zeros((2,) + tuple(views_shape))
    WSTap.listeners.append(paths)
    try:
        tf.function(lambda: clipped_grad_sum_ws(model, x, tf.zeros([2], tf.int32), ws, l2_clip=1.0, mask=None,
                                                ghost=ghost, fold_gain=fold_gain, unfold=unfold)
                ).get_concrete_function()
    finally:
        WSTap.listeners.remove(paths)
    return paths


def ghost_layer_names(model, views_shape, ghost="auto"):
    """Names of the WS convolutions that ``clipped_grad_sum`` clips by ghost norms (see ``ws_gradient_paths``)."""
    return [name for name, path in ws_gradient_paths(model, views_shape, ghost).items() if path == "ghost"]


class _Layer:
    """One WS layer in a step: its per-step tensors, then its chosen path and per-example outputs."""

    def __init__(self, params, layer, kernel_index, gain_index, scale, eps, mode):
        self.layer, self.kernel_index, self.gain_index, self.scale = layer, kernel_index, gain_index, scale
        self.ds, self.s, self.c = ws_geometry(params[kernel_index], eps=eps, eps_mode=mode)
        self.gain = params[gain_index] * scale
        self.gained = self.ds * self.gain
        self.kind = None  # "plain" | "fold" | "ghost" | "unfold", decided while the per-example function is traced
        self.pre_dtype = None  # a ghost layer's compute dtype (bfloat16 under mixed_bfloat16), set likewise
        self.rows = self.q_rows = self.inputs = None  # per-example [B, ...] outputs


def clipped_grad_sum_ws(model, images, labels, ws, *, l2_clip, mask, ghost="auto", fold_gain="auto", clipping=None,
                        unfold="auto"):
    """``clipping.clipped_grad_sum`` with per-example gradients taken w.r.t. standardized kernels.

    ``ws``: ``ws_kernels(model)``, not empty. Same arguments and result as
    ``clipped_grad_sum``; the math is in this module's docstring.
    """
    params = [v.value for v in model.trainable_variables]
    untapped = set()  # shared layers that "auto" tapped: traced again on the per-example loop
    while True:
        entries = [_Layer(params, *w) for w in ws]
        replaced = {i for e in entries for i in (e.kernel_index, e.gain_index)}
        others = [i for i in range(len(params)) if i not in replaced]
        other_grads = _per_example_outputs(model, params, images, labels, entries, others, ghost, fold_gain,
                                           unfold, untapped)
        if other_grads is not None:
            break
    batch = tf.shape(images)[0]
    sq, var_index = sq_norms(other_grads), list(others)
    for e in entries:
        kernel_sq, e.q_rows = _layer_sq_norms(e, batch)
        sq += [kernel_sq, tf.reduce_sum(tf.square(e.q_rows), axis=1) * float(e.scale) ** 2]
        var_index += [e.kernel_index, e.gain_index]
    norms = tf.sqrt(tf.add_n(sq))
    mask = finite_rows(norms, mask)
    direct = [e for e in entries if e.kind != "ghost"]
    if clipping is None:
        factors = masked_clip_factors(norms, l2_clip, mask)
        factor_of = {i: factors for i in range(len(params))}
    else:
        paths = [v.path for v in model.trainable_variables]
        per = clipping_modes.clip_factors(clipping, sq, var_index, paths, norms, mask)
        # A layer's kernel and gain are in one group (clipping_modes.variable_groups).
        factor_of = dict(zip(var_index, per))
        factors = [factor_of[i] for i in others] + [factor_of[e.kernel_index] for e in direct] \
            + [factor_of[e.gain_index] for e in entries]
    summed = weighted_sum(list(other_grads) + [e.rows for e in direct] + [e.q_rows for e in entries],
                          factors, mask, norms)
    out = [None] * len(params)
    for i, gsum in zip(others, summed[:len(others)]):
        out[i] = gsum
    kernel_sums = dict(zip(map(id, direct), summed[len(others):len(others) + len(direct)]))
    kernel_sums.update(ghost_kernel_sums([e for e in entries if e.kind == "ghost"],
                                          lambda e: factor_of[e.kernel_index], mask))
    for e, q_sum in zip(entries, summed[len(others) + len(direct):]):
        # A folded layer's sum is w.r.t. d * s * g: its WS backward takes the gain.
        out[e.kernel_index] = ws_backward(kernel_sums[id(e)], e.ds, e.s, e.c,
                                          e.gain if e.kind == "fold" else 1.0)
        out[e.gain_index] = tf.reshape(q_sum * e.scale, tf.shape(params[e.gain_index]))
    return out, norms


def _per_example_outputs(model, params, images, labels, entries, others, ghost, fold_gain, unfold, untapped):
    """Vectorized per-example gradients of ``params[others]``; sets each entry's path and per-example outputs.

    None where a layer that ``"auto"`` tapped was called twice: its id is
    then in ``untapped`` (a set, updated here) and the caller traces again.

    Per WS layer (``_Layer``): ``rows``, the gradient w.r.t. the unit kernel
    (``"plain"``), the gained kernel (``"fold"``) or the pre-gain output
    (``"ghost"``; ``"unfold"``: the unit kernel's, from patches); ``q_rows``,
    the gain's gradient (not for ``"fold"``, whose gain gradient comes from
    the moments); ``inputs`` (``"ghost"``, ``"unfold"``).
    """
    non_trainable = [v.value for v in model.non_trainable_variables]
    overrides = {e.layer: (e.ds, e.gain, e.gained) for e in entries}
    repeated = set()

    def one(args):
        views, label = args
        with tf.GradientTape() as tape:
            tap = WSTap(ghost, fold_gain, tape, unfold, frozenset(untapped))
            tape.watch(params)
            tape.watch([e.ds for e in entries] + [e.gain for e in entries] + [e.gained for e in entries])
            with standardized_kernel_override(overrides, tap=tap):
                loss = views_loss(model, params, non_trainable, views, label)
        repeated.update(tap.repeated)
        for e in entries:
            e.kind = tap.choices.get(id(e.layer), "plain")
        tapped = _ghost_taps(tap, entries)
        for e in entries:
            if e.kind in TAPPED:
                e.pre_dtype = tapped[id(e.layer)][1].dtype
        wrt = [params[i] for i in others]
        wrt += [tapped[id(e.layer)][1] if e.kind in TAPPED else e.gained if e.kind == "fold" else e.ds
                for e in entries]
        wrt += [e.gain for e in entries if e.kind != "fold"]
        own = [params[i] for e in entries for i in (e.kernel_index, e.gain_index)]
        grads = tape.gradient(loss, wrt + own, unconnected_gradients=tf.UnconnectedGradients.NONE)
        _check_own_variables_unused(entries, grads[len(wrt):])
        grads = [tf.zeros_like(t) if g is None else g for g, t in zip(grads[:len(wrt)], wrt)]
        # Float32 from here on: gradients w.r.t. the float32 parameters and
        # override tensors are float32 already; a ghost layer's output
        # gradient and input are in its compute dtype (bfloat16 under a
        # mixed policy), and its Grams subtract large terms.
        return [tf.cast(t, tf.float32) for t in grads + [tapped[id(e.layer)][0] for e in entries if e.kind in TAPPED]]

    outs = tf.vectorized_map(one, (images, labels), fallback_to_while_loop=True)
    if repeated:
        untapped.update(repeated)
        return None
    n = len(others)
    rest = iter(outs[n + len(entries):])
    for e, rows in zip(entries, outs[n:n + len(entries)]):
        e.rows = rows
    for e in entries:
        if e.kind != "fold":
            e.q_rows = next(rest)
    for e in entries:
        if e.kind in TAPPED:
            e.inputs = next(rest)
        if e.kind == "unfold":  # dL/dpre -> dL/d(d * s), then a plain layer
            e.rows = unfolded_kernel_rows(e.inputs, e.rows, e.layer)
    return outs[:n]


def _ghost_taps(tap, entries):
    """``{id(layer): (inputs, pre)}`` of the ghost layers; raises for one that recorded nothing (protocol, item 3)."""
    tapped = {id(layer): (x, pre) for layer, x, pre in tap.entries}
    for e in entries:
        if e.kind in TAPPED and id(e.layer) not in tapped:
            raise TypeError(
                f"WS layer {e.layer.name!r} ({type(e.layer).__name__}) took the ghost path but did not record its "
                f"input and pre-gain output with ws_override.record_ghost; see {_PROTOCOL} (item 3).")
    return tapped


def _check_own_variables_unused(entries, own_grads):
    """Raises where the loss depends on a WS layer's own kernel or gain under the override (protocol, item 2).

    The fast path differentiates w.r.t. the override's tensors only: a
    gradient through the variables themselves would be lost.
    """
    for j, e in enumerate(entries):
        if own_grads[2 * j] is not None or own_grads[2 * j + 1] is not None:
            raise TypeError(
                f"WS layer {e.layer.name!r} ({type(e.layer).__name__}) reads its own kernel or gain inside "
                "ws_override.standardized_kernel_override: the WS fast path would drop that part of its gradient. "
                f"Follow {_PROTOCOL} (item 2), or have ws_parts() return None.")


def _layer_sq_norms(e, batch):
    """``(squared norms [B] of a WS layer's raw-kernel gradients, the gain's gradients [B, cout])``."""
    if e.kind == "fold":
        # dL/dg = sum(a' * d * s) for a' = dL/d(d * s * g): ws_kernel_norms' second result.
        return ws_kernel_norms(e.rows, e.ds, e.s, e.c, gain=e.gain)
    q = tf.reshape(e.q_rows, [batch, -1])
    if e.kind in ("plain", "unfold"):
        return ws_kernel_norms(e.rows, e.ds, e.s, e.c)[0], q
    sigma = fan_in_sum(e.ds)
    dpre = e.rows
    if e.pre_dtype == tf.float32:
        # sum(a * d * s) = g * q: a = g * dL/dw_hat and q = sum(dL/dw_hat * d * s).
        pa = q * tf.reshape(e.gain, [-1])
    else:
        pa = float32_projection(e.inputs, e.rows, e.layer, e.ds, batch)
    sq = ghost_ws_sq_norms(*patch_gram(e.inputs, e.layer, centred=True),
                           tf.reshape(dpre, [batch, -1, dpre.shape[-1]]), pa, e.ds, e.s, e.c,
                           centred=True, sigma=sigma)
    return sq, q
