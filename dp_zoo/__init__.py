"""dp_zoo: differentially private image classification models for Keras 3.

After De et al. 2022, "Unlocking High-Accuracy Differentially Private Image
Classification through Scale" (arXiv 2204.13650).

Public API (imported lazily, so ``import dp_zoo`` stays cheap and a broken
optional piece never breaks the rest):

- ``dp_zoo.load(name)``: a published private model with its card attached.
- ``dp_zoo.list_models()``: the zoo's entries.
- ``dp_zoo.card(name)``: the model card of an entry.
- ``dp_zoo.create_model(arch, num_classes=..., input_shape=...)``; ``pretrained=True`` (or an
  entry name) loads a published zoo entry's weights.
- ``dp_zoo.list_architectures()``.
- ``dp_zoo.make_private(model, ...)``: a Keras model whose ``fit`` runs DP-SGD.
"""

import functools
import importlib

from dp_zoo import cli

__version__ = "0.1.0"

# name -> (module, attribute)
_LAZY = {
    "create_model": ("dp_zoo.publish.pretrained", "create_model"),  # the registry's, plus pretrained=True
    "list_architectures": ("dp_zoo.models._registry", "list_architectures"),
    "load": ("dp_zoo.publish.zoo", "load"),
    "list_models": ("dp_zoo.publish.listing", "list_models"),
    "card": ("dp_zoo.publish.zoo", "card"),
    "make_private": ("dp_zoo.engine.keras_private", "make_private"),
}

__all__ = sorted(list(_LAZY) + ["__version__"])


def _register_layers_when_keras_loads(keras):
    """``keras.saving.load_model`` (= ``keras.models.load_model``) of a dp_zoo model works after ``import dp_zoo``.

    dp_zoo's layers register with Keras when ``dp_zoo.models`` is imported,
    which imports TensorFlow (seconds). Instead of paying that in ``import
    dp_zoo``, Keras' loader is wrapped to import ``dp_zoo.models`` first, the
    first time it is called. (Keras may be imported inside TensorFlow's own
    import, so nothing is imported here.)
    """
    load = keras.saving.load_model
    if getattr(load, "_dp_zoo_registers_layers", False):
        return

    @functools.wraps(load)
    def load_model(*args, **kwargs):
        importlib.import_module("dp_zoo.models")  # registers dp_zoo's custom layers with Keras
        return load(*args, **kwargs)

    load_model._dp_zoo_registers_layers = True
    for namespace in (keras.saving, keras.models):
        if getattr(namespace, "load_model", None) is load:
            namespace.load_model = load_model


# Library use is as quiet as the command lines (TensorFlow's GPU-probing and CPU-feature lines are
# dropped from stderr while it imports), and Keras' loader knows dp_zoo's layers; neither imports
# TensorFlow here.
cli.filter_tensorflow_startup()
cli.after_import("keras", _register_layers_when_keras_loads)


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dp_zoo' has no attribute {name!r}")


def __dir__():
    return __all__
