"""Keras 3 model families: WS-WideResNet, NF-ResNet, NFNet.

Importing this package registers every family with the registry.
"""

from dp_zoo.models._registry import create_model, list_architectures  # noqa: F401
