"""Keras 3 model families: WS-WideResNet, NF-ResNet, NFNet.

Importing this package registers the custom layers with Keras (so saved
models load) and exposes the architecture registry.
"""

from dp_zoo.models import layers  # noqa: F401  registers serializable layers
from dp_zoo.models._registry import create_model, list_architectures  # noqa: F401
