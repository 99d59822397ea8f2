"""How the WS fast path forms each WS layer's per-example gradients: the options, the cost model, the tap.

``WSTap`` is handed to the layers while the per-example function is traced
(``ws_override.standardized_kernel_override``): each WS layer asks it which
path to take (``"plain"``, ``"fold"``, ``"ghost"``, ``"unfold"``; the
math of each is in ``dp/ws_fast_path.py``) and, on a tapped path, hands it
its input and pre-gain output.
"""

from dp_zoo.dp.ghost import GHOST_COST_RATIO, conv_geometry, ghost_costs

# Fold the gain into the kernel (``fold_gain="auto"``) when the kernel's
# fan-in is under FOLD_COST_RATIO x the output positions per example: three
# output-sized passes against about two fan-in-sized ones (see
# ``WSTap._wants_fold``).
FOLD_COST_RATIO = 1.5
# ``unfold="auto"``: input patches and one einsum for a layer's per-example kernel gradients where
# each example's kernel gradient is small work (at most UNFOLD_MAX_MACS multiply-adds over its K
# views): there the loop over examples costs more than the patches (benchmarks/kernel_grad_paths.py:
# wrn_mnist's 14x14 and 7x7 layers, 0.45M each, 0.54x and 0.27x the loop's time; WRN-16-4's 16x16
# layers, 38M, 1.24x; the whole wrn_mnist step at K=1, README "Benchmarks").
UNFOLD_MAX_MACS = 2**20
# The kinds whose layers hand their input and pre-gain output to the tap (protocol, item 3).
TAPPED = ("ghost", "unfold")


def check_path_options(ghost, fold_gain, unfold="auto"):
    """Raises ValueError unless ``ghost``, ``fold_gain`` and ``unfold`` are each ``"auto"``, True or False."""
    for name, value in (("ghost", ghost), ("fold_gain", fold_gain), ("unfold", unfold)):
        if value not in ("auto", True, False):
            raise ValueError(f"{name}={value!r}: use 'auto', True or False")


class WSTap:
    """Chooses, per WS layer, how its per-example gradients are formed; collects ghost layers' inputs and outputs.

    Layers call ``choose``/``record`` while the per-example function is
    traced; shapes there are per example, ``[K, H, W, C]``. ``choices`` maps
    ``id(layer)`` to ``"plain"`` (per-example gradients w.r.t. the gain-free
    standardized kernel and the gain), ``"fold"`` (w.r.t. the standardized
    kernel with the gain in it), ``"ghost"`` or ``"unfold"`` (per-example
    gradients from input patches; the layer itself is told ``"ghost"``).
    """

    listeners = []  # dicts that collect {layer name: choice} (``ws_gradient_paths``)

    def __init__(self, ghost, fold_gain, tape, unfold="auto", untapped=frozenset()):
        self.ghost = ghost
        self.fold_gain = fold_gain
        self.unfold = unfold
        self.tape = tape
        self.untapped = untapped  # ids of layers called more than once: never "ghost" or "unfold"
        self.repeated = set()  # ids of layers that "auto" tapped and that were called again
        self.choices = {}
        self.entries = []  # (layer, inputs, pre) of ghost layers, in call order

    def choose(self, layer, inputs, ghost_ok):
        key = id(layer)
        if key in self.choices:
            if self.choices[key] in TAPPED:
                self._called_twice(layer, self.choices[key])
            return "ghost" if self.choices[key] == "unfold" else self.choices[key]
        ghost_ok = ghost_ok and key not in self.untapped
        if ghost_ok and self._wants_ghost(layer, inputs):
            choice = "ghost"
        elif ghost_ok and self._wants_unfold(layer, inputs):
            choice = "unfold"
        elif self._wants_fold(layer, inputs):
            choice = "fold"
        else:
            choice = "plain"
        self.choices[key] = choice
        for paths in WSTap.listeners:
            paths[layer.name] = choice
        # An unfolded layer records its input and output exactly as a ghost layer does.
        return "ghost" if choice == "unfold" else choice

    def _called_twice(self, layer, choice):
        # The tap records one call per layer. Where "auto" chose the path, the
        # step is traced again with the layer on the per-example loop
        # (ws_fast_path.clipped_grad_sum_ws; this trace is discarded); where the caller
        # asked for it, a clear error. Not an exception for the first case:
        # autograph and vectorized_map would wrap it on its way out.
        if (self.ghost if choice == "ghost" else self.unfold) == "auto":
            self.repeated.add(id(layer))
            return
        raise NotImplementedError(
            f"WS layer {layer.name!r} is called more than once per example; ghost clipping and the unfold "
            "path cover one call. Pass ghost=False (and unfold=False) to clipped_grad_sum for this model.")

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

    def _wants_unfold(self, layer, inputs):
        if self.unfold != "auto":
            return self.unfold
        geom = conv_geometry(layer, inputs.shape[1], inputs.shape[2])
        positions = inputs.shape[0] * geom["out"][0] * geom["out"][1]
        fan_in = geom["kernel"][0] * geom["kernel"][1] * inputs.shape[-1]
        return positions * fan_in * layer.filters <= UNFOLD_MAX_MACS

    def _wants_fold(self, layer, inputs):
        if self.fold_gain != "auto":
            return self.fold_gain
        # Unfolded, each example pays three passes over the layer's output
        # (the gain's multiply forward and backward, and the gain's gradient
        # as a product summed over positions); folded, one multiply-and-sum
        # over the kernel's fan-in for the gain's gradient (from the sums
        # that its norm needs anyway, ``ws_math.ws_kernel_norms``).
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
