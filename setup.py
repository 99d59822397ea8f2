"""Installable package for dp_zoo (see README.md)."""
import pathlib
import re

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (_HERE / "dp_zoo" / "__init__.py").read_text(),
    re.M,
).group(1)

setup(
    name="dp_zoo",
    version=_VERSION,
    description=(
        "A TensorFlow/Keras model zoo for differentially private image "
        "classification (De et al. 2022), with its DP-SGD training engine."
    ),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dp_zoo", "dp_zoo.*"]),
    package_data={"dp_zoo": ["py.typed", "recipes/epsilons.json", "publish/zoo_entries.json",
                            "publish/known_weights.json"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "dp-accounting>=0.6,<0.7",
        "tensorflow-datasets>=4.9.9,<5",
        # TFDS imports importlib_resources without declaring it.
        "importlib_resources>=6",
        "tensorflow-hub>=0.16,<0.17",
        # tensorflow_hub imports pkg_resources, removed from setuptools 81.
        "setuptools<81",
        "absl-py>=2.1,<3",
        "scikit-learn>=1.5,<2",
        "numpy>=1.26",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        # TensorBoard scalars of a run (tf.summary needs it since TF 2.16).
        "tensorboard>=2.21,<2.22",
    ],
    extras_require={
        # pytest-xdist: the README's test command runs on two worker processes.
        # pyyaml: tests/test_model_card.py parses the card README's YAML front matter.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "pyyaml>=6,<7"],
        # Numerical parity against timm (PyTorch). torch 2.13.0 CPU lies on
        # the project's machines; timm imports torchvision, whose PyPI build does
        # not load beside the 2.13.0 CPU torch, so the pair 2.14.1/0.29.1 (also
        # on disk here) is pinned. See README "Parity tests".
        "parity": ["torch==2.14.1", "torchvision==0.29.1", "timm>=1.0.20,<1.1"],
        "publish": ["kagglehub>=0.3"],
    },
    entry_points={
        "console_scripts": [
            "dp-zoo-train=dp_zoo.commands.scripts:train",
            "dp-zoo-export=dp_zoo.commands.scripts:export",
            "dp-zoo-serve=dp_zoo.commands.scripts:serve",
            "dp-zoo-privacy=dp_zoo.commands.scripts:privacy",
            "dp-zoo-audit=dp_zoo.commands.scripts:audit",
            "dp-zoo-zoo=dp_zoo.commands.scripts:zoo",
            "dp-zoo-tune=dp_zoo.commands.scripts:tune",
            "dp-zoo-data=dp_zoo.commands.scripts:data",
        ]
    },
)
