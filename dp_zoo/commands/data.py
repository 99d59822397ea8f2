"""``python -m dp_zoo.data`` (and ``dp-zoo-data``): bring a local copy of a data set into dp_zoo.

``python -m dp_zoo.data import mnist [FILE ...]`` reads ``mnist.pkl.gz``
(deeplearning.net's), Keras' ``mnist.npz`` or the four IDX files (gzipped or
not, or their directory), checks that they are the standard MNIST split, and
writes dp_zoo's checksummed copy under ``$DP_ZOO_HOME/datasets/mnist`` (else
the user cache), where ``--dataset mnist`` reads it without TFDS or a
network. With no FILE it imports Keras' ``~/.keras/datasets/mnist.npz``
(``$KERAS_HOME``). No pickled code is ever run (``mnist_files``).
"""

import sys

from dp_zoo import cli


def _parser():
    p = cli.Parser("dp_zoo.data", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("import",), help="import: check a local copy and write dp_zoo's own")
    p.add_argument("dataset", choices=("mnist",), help="the data set")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="mnist.pkl.gz, mnist.npz, or the four IDX files or their directory "
                        "(default: Keras' ~/.keras/datasets/mnist.npz)")
    return p


def import_mnist(files):
    """Imports ``files`` (or Keras' mnist.npz) into dp_zoo's MNIST copy; returns the lines to print."""
    import os

    from dp_zoo.data import mnist_local

    if not files:
        files = [mnist_local.keras_npz()]
        if not os.path.exists(files[0]):
            raise FileNotFoundError(
                f"no FILE given and no Keras copy at {files[0]}; pass mnist.pkl.gz, mnist.npz or the four IDX files "
                "(README, \"MNIST\", says where to get them).")
    index = mnist_local.import_files(files)
    std = mnist_local.MNIST
    return [
        f"imported {index['source']} into {index['directory']}",
        f"checked: {std.n_train:,} training and {std.n_test:,} test images, 28x28 uint8, the standard label counts "
        "and SHA-256 (order and pixels)",
        *[f"  {k} sha256 {v}" for k, v in index["sha256"].items()],
        "python -m dp_zoo.train --dataset mnist now reads this copy (no TFDS, no network).",
    ]


def main(argv=None):
    """Runs ``python -m dp_zoo.data`` with ``argv``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        lines = import_mnist(args.files)
    except (ValueError, OSError) as e:
        print(f"dp_zoo.data: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
