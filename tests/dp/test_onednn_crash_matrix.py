"""The DP step never hands oneDNN a strided 1x1 convolution, and survives oneDNN on every family (issue #27).

oneDNN's 1x1 backward-weights kernels write past their workspace for a
strided 1x1 convolution with fewer input channels than their channel block
(``dp_zoo/models/conv_ops.py``): wrong kernel gradients, or a heap corruption
that kills the process. Two kinds of check:

- the traced graphs hold no ``Conv2D``, ``Conv2DBackpropFilter`` or
  ``Conv2DBackpropInput`` with a 1x1 kernel and a stride > 1, loop bodies
  included: the invariant the fix rests on, whatever the CPU and TensorFlow's
  settings. Quick: the non-private gradient of every tiny family and
  WRN-16-4, and ``wrn_test``'s DP step on its per-example and ghost paths;
  slow: the DP step of every family on those paths and the bf16 ghost path.
- ``clipped_grad_sum`` runs in a subprocess (a crash kills only it), printing
  each combination of model, input size, ``ghost``, ``fold_gain`` and ``unfold`` before
  it runs, with oneDNN's custom operations on (``TF_ENABLE_ONEDNN_OPTS=1``:
  TensorFlow's own default on CPUs with AVX512_VNNI or AMX; without them
  oneDNN's convolutions never run and the check is empty) and one intra-op
  thread (measured on a 2-core AVX2 machine: with one thread the overrun
  kills the process at once, with two it mostly gives wrong numbers). Quick:
  ``wrn_test`` at 8, 16, 28 and 32 px over every path (the crash of issue
  #27), the other tiny families once; slow: every tiny and real family at
  every size and pairing, with TensorFlow's default settings as well.
"""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo import dp

TINY = ("wrn_test", "nf_resnet_test", "nfnet_test", "wrn_digits")
CONV_OPS = ("Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")


def _graphs(graph, outer, seen):
    """``graph`` and every function graph it calls (loop bodies, branches, nested calls), once each.

    ``outer`` maps each called graph's input placeholders to the tensors the
    calling op passes in (by position; an ``If``'s first input is its
    condition), so that a loop body's captured kernel shape can be traced out.
    """
    yield graph
    for op in graph.get_operations():
        for attr in op.node_def.attr.values():
            names = [attr.func.name] if attr.HasField("func") else [f.name for f in attr.list.func]
            for name in names:
                if name and name not in seen:
                    seen.add(name)
                    sub = graph._get_function(name).graph
                    args = list(op.inputs)[1:] if op.type in ("If", "StatelessIf") else list(op.inputs)
                    outer.update({id(p): t for p, t in zip(sub.inputs, args) if p.shape == t.shape})
                    yield from _graphs(sub, outer, seen)


def _kernel_hw(op, outer):
    """The ``(kh, kw)`` of a convolution op's kernel, or None where the graph does not say."""
    if op.type != "Conv2DBackpropFilter":
        return tuple(op.inputs[1].shape[:2])
    sizes = op.inputs[1]
    while sizes.op.type == "Placeholder" and id(sizes) in outer:
        sizes = outer[id(sizes)]
    value = tf.get_static_value(sizes)
    if value is not None:
        return tuple(int(v) for v in value[:2])
    if sizes.op.type in ("Shape", "ShapeN"):
        return tuple(sizes.op.inputs[sizes.value_index].shape[:2])
    return None


def strided_1x1_convolutions(fn, *args):
    """``[(op type, kernel hw, strides)]`` of the convolutions in ``tf.function(fn)``'s graph that are
    1x1 with a stride > 1, or whose kernel size the graph does not give."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    found, outer = [], {}
    for g in _graphs(graph, outer, set()):
        for op in g.get_operations():
            if op.type in CONV_OPS:
                hw, strides = _kernel_hw(op, outer), tuple(op.get_attr("strides"))
                if hw is None or (hw == (1, 1) and strides != (1, 1, 1, 1)):
                    found.append((op.type, hw, strides))
    return found


def _dp_steps(model, bf16=True):
    """``{what: fn(x, y)}``: the DP step on its per-example, unfold and ghost paths (and the bf16 ghost path)."""
    def step(ghost, fold_gain, precision="float32", unfold="auto"):
        return lambda x, y: dp.clipped_grad_sum(model, x, y, l2_clip=1.0, ghost=ghost, fold_gain=fold_gain,
                                                precision=precision, unfold=unfold)
    # fold_gain=True convolves the same way as False, with another tensor.
    steps = {"per-example (ghost=False, fold_gain=True)": step(False, True), "ghost=True": step(True, False),
             "per-example loop (ghost=False, unfold=False)": step(False, True, unfold=False),
             "unfold=True": step(False, False, unfold=True)}
    if bf16:  # the ghost path's float32 projection (ghost.float32_projection) runs only here
        steps["ghost=True, bf16"] = step(True, False, "bf16")
    return steps


def _check_graphs(name, steps):
    model = dp_zoo.create_model(name, num_classes=4, input_shape=(16, 16, 3))
    x, y = tf.zeros([2, 1, 16, 16, 3]), tf.zeros([2], tf.int32)
    found = {what: strided_1x1_convolutions(fn, x, y) for what, fn in steps(model).items()}
    assert not any(found.values()), found


@pytest.mark.parametrize("name", TINY + ("wrn16_4",))
def test_no_strided_1x1_convolution_in_the_non_private_gradient(name):
    # Failed first (before conv_ops) for wrn_test, nf_resnet_test, wrn_digits and wrn16_4: Conv2D,
    # Conv2DBackpropInput and Conv2DBackpropFilter of their strided skip convolutions.
    _check_graphs(name, lambda model: {"non-private": lambda x, y: dp.mean_grad(model, x, y)})


def test_no_strided_1x1_convolution_in_the_dp_step():
    # Failed first (before conv_ops): the same ops in the per-example loop body, and the ghost
    # path's batched Conv2DBackpropFilter, with strides (1, 2, 2, 1).
    _check_graphs("wrn_test", lambda model: _dp_steps(model, bf16=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY + ("wrn16_4", "nf_resnet26", "nfnet_f0"))
def test_no_strided_1x1_convolution_in_any_dp_step(name):
    _check_graphs(name, _dp_steps)


_MATRIX = r"""
import sys
import numpy as np
import tensorflow as tf
import dp_zoo
from dp_zoo import dp

batch = int(sys.argv[1])
options = {"auto": "auto", "on": True, "off": False}
models = {}
for combo in sys.argv[2:]:
    name, size, ghost, fold, unfold = (combo + ":auto").split(":")[:5]
    size, ghost, fold, unfold = int(size), options[ghost], options[fold], options[unfold]
    if (name, size) not in models:
        models[name, size] = dp_zoo.create_model(name, num_classes=4, input_shape=(size, size, 3))
    x = tf.random.stateless_normal([batch, 1, size, size, 3], seed=[size, 1])
    y = tf.range(batch) % 4
    print(f"{name} {size}px ghost={ghost} fold_gain={fold} unfold={unfold}:", end=" ", flush=True)
    grads, norms = dp.clipped_grad_sum(models[name, size], x, y, l2_clip=1.0, ghost=ghost, fold_gain=fold,
                                       unfold=unfold)
    assert all(np.isfinite(g.numpy()).all() for g in grads) and np.isfinite(norms.numpy()).all()
    print("ok", flush=True)
"""


def run_matrix(combos, batch=2, onednn=True, timeout=900):
    """Runs ``clipped_grad_sum`` for each ``"name:size:ghost:fold_gain[:unfold]"`` (unfold "auto" where not
    given) in one fresh process; fails on its death."""
    # glibc's heap-corruption message to stderr (not the terminal); Python's stack on a fatal signal.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", LIBC_FATAL_STDERR_="1", PYTHONFAULTHANDLER="1")
    if onednn:
        env.update(TF_ENABLE_ONEDNN_OPTS="1", TF_NUM_INTRAOP_THREADS="1")
    else:
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    r = subprocess.run([sys.executable, "-c", _MATRIX, str(batch), *combos], capture_output=True, text=True,
                       timeout=timeout, env=env)
    lines = r.stdout.strip().splitlines()
    # The error and the Python stack, without faulthandler's list of extension modules.
    tail = [line for line in r.stderr.splitlines() if not line.lstrip().startswith("Extension modules")][-30:]
    assert r.returncode == 0, (f"the process died (return code {r.returncode}) at "
                               f"{lines[-1] if lines else 'start'!r}; stderr tail:\n" + "\n".join(tail))
    assert len(lines) == len(combos) and all(line.endswith(": ok") for line in lines), r.stdout


def test_dp_step_survives_onednn():
    # Failed first (before conv_ops): the process died (return code -6, "malloc_consolidate(): invalid
    # chunk size") at its first combination, "wrn_test 8px ghost=False fold_gain=True".
    # wrn_test at every size and on every path: fold, the cost model's choice, plain, ghost (issue
    # #27 saw crashes at 28 and 32 px with ghost off, at 16 and 32 with auto; the per-example loop,
    # unfold=False, is where they were); the others once.
    run_matrix(["wrn_test:8:off:on:off", "wrn_test:16:auto:auto", "wrn_test:28:off:off:off", "wrn_test:28:off:off:on",
                "wrn_test:32:on:on", "wrn_test:32:off:off:off",
                "nf_resnet_test:28:auto:auto", "nfnet_test:28:auto:auto", "wrn_digits:28:auto:auto"])


SIZES = (8, 16, 28, 32)
PAIRS = tuple((g, f) for g in ("auto", "on", "off") for f in ("auto", "on", "off"))
# With unfold "auto" (the default) unless a third value is given: the per-example loop and the unfold
# path for every layer, both with ghost off.
COMBOS = PAIRS + (("off", "off", "off"), ("off", "on", "off"), ("off", "off", "on"))


@pytest.mark.slow
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "tf-default"])
@pytest.mark.parametrize("name", TINY + ("wrn16_4", "nf_resnet26"))
def test_dp_step_survives_the_whole_matrix(name, onednn):
    # Every size with every combination; real families with one per value of each option.
    combos = COMBOS if name in TINY else (("off", "off", "off"), ("on", "on"), ("auto", "auto"), ("off", "off", "on"))
    run_matrix([":".join((name, str(size)) + c) for size in SIZES for c in combos], batch=2 if name in TINY else 1,
               onednn=onednn, timeout=3000)
