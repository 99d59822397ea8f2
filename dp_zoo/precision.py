"""Training precision: which Keras dtype policy a model's forward/backward pass runs in.

``"float32"`` (the default) leaves a model as it is. ``"bf16"`` is Keras'
``mixed_bfloat16``: layers compute in bfloat16 while every variable stays
float32 (Keras casts a variable to bfloat16 where a layer reads it, and the
gradient of that cast is float32). No loss scaling is needed: bfloat16 has
float32's exponent range.

The policy is applied per model and only while the DP step is traced
(``compute_precision``), never by changing Keras' global policy: the model
evaluates, saves and exports in its own (float32) policy, so a published
model computes in float32 unless its user chooses otherwise. What stays
float32 inside the step, and why: docs/design.md, "Precision".
"""

import contextlib
import threading

# The values of ``TrainConfig.precision`` and ``--precision``, and the Keras policy each means.
PRECISIONS = {"float32": "float32", "bf16": "mixed_bfloat16"}

_LOCK = threading.Lock()
_ACTIVE = {}  # id(model) -> [depth, {layer: policy before}]


def check_precision(precision):
    """Returns ``precision`` if it is a known precision, else raises a one-line ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported: use one of {', '.join(map(repr, PRECISIONS))} "
                         "('bf16' = Keras' mixed_bfloat16: bfloat16 compute, float32 variables).")
    return precision


@contextlib.contextmanager
def compute_precision(model, precision):
    """Within the context, every layer of ``model`` computes in ``precision``'s policy; restored on exit.

    ``"float32"`` changes nothing (a model the user built under another
    policy keeps it). Re-entrant and thread-safe: ``tf.distribute`` traces
    each replica in a thread of its own, inside the caller's context, so
    the first entry sets the policies and the last exit puts back what
    each layer had.
    """
    check_precision(precision)
    if precision == "float32":
        yield
        return
    key = id(model)
    with _LOCK:
        if key in _ACTIVE:
            _ACTIVE[key][0] += 1
        else:
            layers = list(model._flatten_layers(include_self=True, recursive=True))
            _ACTIVE[key] = [1, {layer: layer.dtype_policy for layer in layers}]
            for layer in layers:
                layer.dtype_policy = PRECISIONS[precision]
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE[key][0] -= 1
            if _ACTIVE[key][0] == 0:
                for layer, policy in _ACTIVE.pop(key)[1].items():
                    layer.dtype_policy = policy
