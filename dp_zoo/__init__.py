"""dp_zoo: differentially private image classification models for Keras 3.

After De et al. 2022, "Unlocking High-Accuracy Differentially Private Image
Classification through Scale" (arXiv 2204.13650).

Public API (imported lazily, so ``import dp_zoo`` stays cheap and a broken
optional piece never breaks the rest):

- ``dp_zoo.load(name)``: a published private model with its card attached.
- ``dp_zoo.list_models()``: the zoo's entries.
- ``dp_zoo.card(name)``: the model card of an entry.
- ``dp_zoo.create_model(arch, num_classes=..., input_shape=...)``.
- ``dp_zoo.list_architectures()``.
- ``dp_zoo.make_private(model, ...)``: a Keras model whose ``fit`` runs DP-SGD.
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute)
_LAZY = {
    "create_model": ("dp_zoo.models._registry", "create_model"),
    "list_architectures": ("dp_zoo.models._registry", "list_architectures"),
    "load": ("dp_zoo.zoo", "load"),
    "list_models": ("dp_zoo.zoo", "list_models"),
    "card": ("dp_zoo.zoo", "card"),
    "make_private": ("dp_zoo.train.keras_private", "make_private"),
}

__all__ = sorted(list(_LAZY) + ["__version__"])


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dp_zoo' has no attribute {name!r}")


def __dir__():
    return __all__
