"""Keras 3 model families: WS-WideResNet, NF-ResNet, NFNet.

Importing this package imports every family module, which registers the
family's architectures and every custom layer it is built from with Keras:
after ``import dp_zoo.models`` alone, any saved model of any family loads.

A new family is one module that defines its config dataclass, its
``build_<family>(cfg, *, num_classes, input_shape, name)`` and its variants,
calls ``_registry.register_family``, and is imported below.
"""

from dp_zoo.models import layers, ws_conv  # noqa: F401  (the shared layers)
from dp_zoo.models import nf_resnet, nfnet, wide_resnet  # noqa: F401  (the families)
from dp_zoo.models._registry import create_model, list_architectures  # noqa: F401
