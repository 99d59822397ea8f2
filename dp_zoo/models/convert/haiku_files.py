"""Haiku checkpoint files: a safe unpickler for DeepMind's and jax_privacy's pickles, and npz.

``load_haiku_checkpoint(path)`` reads those files without Haiku, JAX or
(usually) dill, refusing any pickled global outside numpy arrays and plain
containers; ``save_haiku_checkpoint(params, path)`` writes a pickle-free
npz. The trees they hold load into our models with ``haiku.py``.
"""

import codecs
import collections
import importlib
import os
import pickle

import numpy as np

from dp_zoo.models.convert.haiku import flatten_haiku_params, unflatten_haiku_params


def _plain_mapping(*args, **kwargs):
    """Stands in for Haiku's FlatMapping / FlatMap / frozendict when unpickling."""
    return dict(*args, **kwargs)


def _dill_create_array(f, args, state, npdict=None):
    """What ``dill._dill._create_array`` does (how dill pickles numpy arrays)."""
    a = f(*args)
    a.__setstate__(state)
    if npdict:
        a.__dict__.update(npdict)
    return a


def _dill_create_dtypemeta(scalar_type):
    return np.dtype if scalar_type is None else type(np.dtype(scalar_type))


def _jax_reconstruct_array(fun, args, arr_state, aval_state=None):
    """``jax``'s array unpickling, stopping at the numpy array (no device_put).

    ``aval_state`` (fields of jax's abstract value, such as weak typing) is
    part of the pickled call and means nothing to a numpy array.
    """
    a = fun(*args)
    a.__setstate__(arr_state)
    return a


_NUMPY_GLOBALS = {"ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer"}
_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "int": int, "float": float, "bool": bool,
             "str": str, "bytes": bytes, "bytearray": bytearray, "complex": complex,
             "set": set, "frozenset": frozenset, "slice": slice}


class _NeedsDill(Exception):
    pass


def _numpy_global(module, name):
    candidates = [module]
    if module.startswith("numpy.core"):
        candidates.insert(0, "numpy._core" + module[len("numpy.core"):])  # numpy 2 moved it
    for mod in candidates:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


class _ParamsUnpickler(pickle.Unpickler):
    """Unpickles parameter trees of numpy arrays only: no Haiku, JAX or dill needed.

    Any global outside numpy's array reconstruction, plain containers,
    Haiku's mapping types, dill's array helper and JAX's array reconstruction
    is refused, so such a file cannot run other code while it is read.
    """

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy":
            if name in _NUMPY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
                return _numpy_global(module, name)
        elif module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        elif (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        elif (module, name) == ("_codecs", "encode"):
            return codecs.encode
        elif module.split(".")[0] == "haiku" and name in ("FlatMapping", "FlatMap", "frozendict"):
            return _plain_mapping
        elif module.split(".")[0] == "jax" and name == "_reconstruct_array":
            return _jax_reconstruct_array
        elif module.split(".")[0] == "dill":
            if name == "_create_array":
                return _dill_create_array
            if name == "_create_dtypemeta":
                return _dill_create_dtypemeta
            raise _NeedsDill(f"{module}.{name}")
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a Haiku parameter checkpoint should hold "
            "only dicts of numpy/JAX arrays")


def load_haiku_checkpoint(path):
    """Reads a Haiku parameter checkpoint without Haiku or JAX.

    Formats:
      - pickles, as written by ``pickle``/``dill`` (DeepMind's
        ``F*_haiku.npz`` NFNet weights, which are dill pickles despite the
        suffix; jax_privacy's 2022 ``WRN_*.dill`` checkpoints). Haiku's
        FlatMapping/FlatMap become dicts, numpy/JAX arrays become numpy
        arrays, and dill's numpy array helper is emulated, so dill is not
        needed for such files; only a file that uses other dill features asks
        for it (``pip install dill``). Globals outside this set are refused.
      - ``np.savez`` archives whose keys are ``"module/param"`` (what
        ``save_haiku_checkpoint`` writes).

    Args:
      path: the file.

    Returns:
      The stored object with Haiku mappings as plain dicts, e.g. ``{module:
      {param: array}}`` or a checkpoint ``{"params": ..., "network_state":
      ...}``; both are accepted by ``from_deepmind_nfnet`` and
      ``from_haiku_wrn``.

    Raises:
      ImportError: the pickle needs dill features beyond arrays and dill is
        not installed.
      ValueError: not a readable checkpoint (the reason is named).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):  # a zip: np.savez
        with np.load(path, allow_pickle=False) as z:
            bad = [k for k in z.files if "/" not in k]
            if bad:
                raise ValueError(f"{path}: npz keys must read 'module/param' (Haiku names); found {bad[:5]}.")
            return unflatten_haiku_params({tuple(k.rsplit("/", 1)): z[k] for k in z.files})
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path}: a single .npy array, not a parameter tree; save the tree with "
                         "save_haiku_checkpoint (npz with 'module/param' keys) or as a pickle.")
    try:
        with open(path, "rb") as f:
            return _ParamsUnpickler(f).load()
    except _NeedsDill as e:
        try:
            import dill  # noqa: F401
        except ImportError:
            raise ImportError(
                f"{path} is a dill pickle that uses dill's {e} beyond plain arrays; install dill "
                "(pip install dill) to read it.") from None
        with open(path, "rb") as f:
            return _DillParamsUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable Haiku parameter checkpoint ({e}).") from None


class _DillParamsUnpickler(_ParamsUnpickler):
    """As ``_ParamsUnpickler``, resolving dill's own helpers from an installed dill."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except _NeedsDill:
            return getattr(importlib.import_module(module), name)


def save_haiku_checkpoint(params, path):
    """Writes a Haiku parameter tree as an ``np.savez`` archive with ``"module/param"`` keys.

    No pickle: ``load_haiku_checkpoint`` (or ``np.load``) reads it back.

    Args:
      params: as accepted by ``from_deepmind_nfnet`` (e.g. the output of
        ``to_deepmind_nfnet`` / ``to_haiku_wrn``).
      path: destination; numpy appends ``.npz`` if missing.
    """
    flat = flatten_haiku_params(params)
    np.savez(path, **{f"{m}/{n}": a for (m, n), a in flat.items()})
