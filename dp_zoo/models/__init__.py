"""Keras 3 model families: WS-WideResNet, NF-ResNet, NFNet.

Importing this package imports every family module, which registers the
family's architectures and every custom layer it is built from with Keras:
after ``import dp_zoo.models`` alone, any saved model of any family loads.

A new family is one module that defines its config dataclass, its
``build_<family>(cfg, *, num_classes, input_shape, name)`` and its variants,
calls ``_registry.register_family`` with its default recipe (the recipe name
``python -m dp_zoo.train --model ARCH`` starts from, per family and where a
variant differs), and is imported below: that module and the one import are
all a new architecture needs. ``default_recipe(arch)`` answers from the
registry.
"""

import sys

from dp_zoo.models import layers, ws_conv  # noqa: F401  (the shared layers)
from dp_zoo.models import nf_resnet, nfnet, wide_resnet  # noqa: F401  (the families)
from dp_zoo.models._registry import create_model, default_recipe, list_architectures  # noqa: F401

# Keras walks a functional graph recursively when it builds, clones or loads a
# model, one Python frame per layer on the path: NFNet-F6/F7 (84/96 blocks,
# ~2,000 layers deep) exceed Python's default limit of 1,000 frames with a
# RecursionError. 10,000 frames fit in the default thread stack.
_MIN_RECURSION_LIMIT = 10_000
if sys.getrecursionlimit() < _MIN_RECURSION_LIMIT:
    sys.setrecursionlimit(_MIN_RECURSION_LIMIT)
