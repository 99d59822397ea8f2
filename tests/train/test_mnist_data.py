"""dp_zoo's local MNIST copy: the three file formats, the refused hostile pickle, the standard-split
check, the checksummed cache, and ``--dataset mnist`` through the loader and the training CLI.

Every fixture is a tiny synthetic MNIST built here; the standard it must match is made from the
fixture itself (``mnist_local.describe``) and passed in, or patched over ``mnist_local.MNIST`` for
the loader, while the real command (``python -m dp_zoo.data``) keeps the real 60,000 / 10,000 check.
"""

import copyreg
import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest

from dp_zoo import data
from dp_zoo.commands import data as data_cli
from dp_zoo.data import mnist_files, mnist_local
from dp_zoo.data.mnist_files import MnistFormatError
from dp_zoo.recipes import config as C

N_TRAIN, N_VALID, N_TEST = 24, 6, 10  # mnist.pkl.gz's three parts, in miniature


def _arrays(seed=0):
    """(x_train, y_train, x_test, y_test): uint8 [N, 28, 28] and int64, every class present."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VALID
    x_train = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)
    y_train = rng.permutation(np.arange(n) % 10).astype(np.int64)
    y_test = rng.permutation(np.arange(N_TEST) % 10).astype(np.int64)
    return x_train, y_train, x_test, y_test


def _standard(seed=0):
    x_train, y_train, x_test, y_test = _arrays(seed)
    return mnist_local.describe(mnist_files.MnistArrays(x_train, y_train, x_test, y_test, source="fixture"))


# -- writing the three formats -------------------------------------------------------------


class _Py2Array:
    """Pickles as Python 2 numpy did: ``numpy.core.multiarray._reconstruct`` and the bytes as a str."""

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)

    def __reduce__(self):
        core = getattr(np, "_core", None) or np.core
        state = (1, self.a.shape, self.a.dtype, False, self.a.tobytes().decode("latin1"))
        return core.multiarray._reconstruct, (np.ndarray, (0,), "b"), state


def _py2_pickle(obj):
    """Protocol 2, str payloads (no ``_codecs.encode``), the old module name: deeplearning.net's layout."""
    raw = pickle.dumps(obj, protocol=2)
    return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_pkl_gz(path, arrays=None, py2=True, pixels=None):
    x_train, y_train, x_test, y_test = arrays or _arrays()
    flat = lambda x: (x.reshape(len(x), 784).astype(np.float32) / 256) if pixels is None else pixels
    parts = ((flat(x_train[:N_TRAIN]), y_train[:N_TRAIN]), (flat(x_train[N_TRAIN:]), y_train[N_TRAIN:]),
             (flat(x_test), y_test))
    if py2:
        raw = _py2_pickle(tuple((_Py2Array(x), _Py2Array(y)) for x, y in parts))
    else:
        raw = pickle.dumps(parts, protocol=4)
    with gzip.open(path, "wb") as f:
        f.write(raw)
    return path


def write_npz(path, arrays=None, **override):
    x_train, y_train, x_test, y_test = arrays or _arrays()
    # Keras' file stores the labels as uint8.
    fields = dict(x_train=x_train, y_train=y_train.astype(np.uint8), x_test=x_test, y_test=y_test.astype(np.uint8))
    fields.update(override)
    np.savez(path, **fields)
    return path


def write_idx(directory, arrays=None, gz=("train-images-idx3-ubyte",)):
    os.makedirs(directory, exist_ok=True)
    x_train, y_train, x_test, y_test = arrays or _arrays()
    paths = []
    for name, a, magic in (("train-images-idx3-ubyte", x_train, 0x803), ("train-labels-idx1-ubyte", y_train, 0x801),
                           ("t10k-images-idx3-ubyte", x_test, 0x803), ("t10k-labels-idx1-ubyte", y_test, 0x801)):
        raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in a.shape) + a.astype(np.uint8).tobytes()
        path = os.path.join(directory, name + (".gz" if name in gz else ""))
        with (gzip.open if name in gz else open)(path, "wb") as f:
            f.write(raw)
        paths.append(path)
    return paths


def _same_as_fixture(got, seed=0):
    x_train, y_train, x_test, y_test = _arrays(seed)
    np.testing.assert_array_equal(got.x_train, x_train)
    np.testing.assert_array_equal(got.y_train, y_train)
    np.testing.assert_array_equal(got.x_test, x_test)
    np.testing.assert_array_equal(got.y_test, y_test)
    assert got.x_train.dtype == np.uint8 and got.y_train.dtype == np.int64


# -- the formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("py2", [True, False], ids=["python2-layout", "protocol4"])
def test_pkl_gz_train_plus_validation_is_the_training_split_and_pixels_map_back_exactly(tmp_path, py2):
    got = mnist_files.read([write_pkl_gz(str(tmp_path / "mnist.pkl.gz"), py2=py2)])
    _same_as_fixture(got)  # k/256 -> k for every pixel value 0..255 drawn, train then validation in order
    assert "train + validation" in got.source


def test_npz_and_idx_read_the_same_arrays(tmp_path):
    _same_as_fixture(mnist_files.read([write_npz(str(tmp_path / "mnist.npz"))]))
    paths = write_idx(str(tmp_path / "idx"))  # one gzipped, three not
    _same_as_fixture(mnist_files.read(paths))
    _same_as_fixture(mnist_files.read([str(tmp_path / "idx")]))  # their directory


def test_import_writes_a_checksummed_copy_that_the_loader_serves(tmp_path, monkeypatch):
    std = _standard()
    index = mnist_local.import_files([write_pkl_gz(str(tmp_path / "mnist.pkl.gz"))], standard=std)
    assert index["directory"] == os.path.join(os.environ["DP_ZOO_HOME"], "datasets", "mnist")
    assert index["sha256"] == std.sha256 and list(index["source_sha256"]) == ["mnist.pkl.gz"]
    with pytest.raises(MnistFormatError, match="x_train fails its SHA-256 check"):
        data.load_dataset(C.DataConfig(dataset="mnist"), "train")  # the real standard: the fixture is not MNIST
    monkeypatch.setattr(mnist_local, "MNIST", std)
    x_train, y_train, x_test, y_test = _arrays()
    cfg = C.DataConfig(dataset="mnist", validation_size=5)
    tr, va, te = (data.load_dataset(cfg, s) for s in ("train", "validation", "test"))
    np.testing.assert_array_equal(tr.images[..., 0], x_train[:-5])
    np.testing.assert_array_equal(va.images[..., 0], x_train[-5:])  # held out of the training images
    np.testing.assert_array_equal(te.images[..., 0], x_test)
    assert tr.images.shape[1:] == (28, 28, 1) and tr.labels.dtype == np.int64 and tr.num_classes == 10
    assert tr.split.startswith("mnist train[:-5] (dp_zoo's checked copy") and te.split.startswith("mnist test ")
    assert (tr.mean, tr.std) == ((0.1307,), (0.3081,))
    sha = mnist_local.array_sha256
    assert tr.sha256 == {"images": sha(tr.images), "labels": sha(y_train[:-5])}
    assert te.sha256["labels"] == std.sha256["y_test"]  # the whole test split: the pinned hash itself
    with pytest.raises(ValueError, match="always held in memory"):
        data.load_dataset(cfg, "train", streaming=True)


def test_the_cache_refuses_a_changed_file_and_a_failed_import_keeps_the_old_copy(tmp_path, monkeypatch):
    std = _standard()
    monkeypatch.setattr(mnist_local, "MNIST", std)
    mnist_local.import_files([write_npz(str(tmp_path / "mnist.npz"))])
    directory = mnist_local.cache_dir()
    index = json.load(open(os.path.join(directory, mnist_local.INDEX)))

    def crash(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as mp, pytest.raises(OSError, match="disk full"):
        mp.setattr(mnist_local.np, "savez", crash)
        mnist_local.import_files(write_idx(str(tmp_path / "idx")))
    assert sorted(os.listdir(directory)) == sorted([mnist_local.INDEX, index["arrays"]])  # no temporary left
    _same_as_fixture(mnist_local.read_cache())
    # Tampering after the import: same shapes, one pixel changed.
    arrays = dict(np.load(os.path.join(directory, index["arrays"])))
    arrays["x_test"][0, 0, 0] ^= 1
    np.savez(os.path.join(directory, index["arrays"]), **arrays)
    with pytest.raises(MnistFormatError, match=r"x_test fails its SHA-256 check .*python -m dp_zoo.data import mnist"):
        data.load_dataset(C.DataConfig(dataset="mnist"), "test")


def test_keras_mnist_npz_is_picked_up_when_there_is_no_copy(monkeypatch, capsys):
    monkeypatch.setattr(mnist_local, "MNIST", _standard())
    os.makedirs(os.path.join(os.environ["KERAS_HOME"], "datasets"))
    write_npz(mnist_local.keras_npz())
    te = data.load_dataset(C.DataConfig(dataset="mnist"), "test")
    assert "Importing Keras'" in capsys.readouterr().out and "from mnist.npz" in te.split
    assert os.path.exists(os.path.join(mnist_local.cache_dir(), mnist_local.INDEX))


# -- refusals --------------------------------------------------------------------------------------


class _RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_hostile_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsACommand(f"touch {marker}")
    assert not marker.exists()
    for name, obj in (("top", evil), ("inside", ((evil, None), (None, None), (None, None)))):
        path = tmp_path / f"{name}.pkl.gz"
        with gzip.open(path, "wb") as f:
            f.write(pickle.dumps(obj, protocol=2))
        with pytest.raises(MnistFormatError) as e:
            mnist_files.read([str(path)])
        msg = str(e.value)
        assert "\n" not in msg and "system" in msg and "refusing to load it" in msg
        assert not marker.exists()  # os.system never ran
    # Sanity of the test: the same pickle, loaded the ordinary way, does run the command.
    pickle.loads(pickle.dumps(evil))
    assert marker.exists()


def test_a_pickle_naming_any_other_global_is_refused(tmp_path):
    path = tmp_path / "m.pkl.gz"
    # Harmless-looking globals are not admitted either: only numpy's array reconstruction is.
    for obj, name in ((copyreg._reconstructor, "copyreg._reconstructor"), (eval, "builtins.eval"),
                      (np.load, "numpy.load")):
        with gzip.open(path, "wb") as f:
            f.write(pickle.dumps(((obj, None), (None, None), (None, None)), protocol=4))
        with pytest.raises(MnistFormatError, match=f"asks for {name}, which is not part of a numpy array"):
            mnist_files.read([str(path)])


@pytest.mark.parametrize("write,match", [
    (lambda p: write_npz(p, x_train=np.zeros((30, 28, 28), np.float32)),
     r"x_train must be uint8 pixels, got a float32"),
    (lambda p: write_npz(p, x_test=np.zeros((10, 32, 32), np.uint8)),
     r"x_test must be \[N, 28, 28\] images, got shape \[10, 32, 32\]"),
    (lambda p: write_npz(p, y_train=np.zeros((30, 2), np.int64)), r"y_train must be one label per image"),
    (lambda p: write_npz(p, y_test=np.full(10, 12, np.int64)), r"y_test must be digits 0..9, found 12..12"),
    (lambda p: write_npz(p, y_test=np.zeros(10, np.float32)), r"y_test must be integer class labels"),
    (lambda p: np.savez(p, images=np.zeros(3)), r"lacks \['x_train', 'y_train', 'x_test', 'y_test'\]"),
    (lambda p: np.savez(p, x_train=np.array([None], dtype=object), y_train=0, x_test=0, y_test=0),
     r"holds something other than plain arrays"),
])
def test_bad_npz_is_refused_in_one_line(tmp_path, write, match):
    path = str(tmp_path / "mnist.npz")
    write(path)
    with pytest.raises(MnistFormatError, match=match) as e:
        mnist_files.read([path])
    assert "\n" not in str(e.value)


def test_bad_pickles_and_idx_files_are_refused_in_one_line(tmp_path):
    cases = []
    p = write_pkl_gz(str(tmp_path / "a.pkl.gz"), pixels=np.full((N_TRAIN, 784), 0.3, np.float32))
    cases.append((p, "not exact multiples of 1/256"))
    p = write_pkl_gz(str(tmp_path / "b.pkl.gz"), pixels=np.zeros((N_TRAIN, 28, 28), np.float32))
    cases.append((p, r"must be \[N, 784\]"))
    p = str(tmp_path / "c.pkl.gz")
    with gzip.open(p, "wb") as f:
        f.write(pickle.dumps((1, 2), protocol=2))
    cases.append((p, "three \\(images, labels\\) pairs"))
    (tmp_path / "d.pkl.gz").write_bytes(b"not gzip at all")
    cases.append((str(tmp_path / "d.pkl.gz"), "not a readable pickle"))
    for path, match in cases:
        with pytest.raises(MnistFormatError, match=match) as e:
            mnist_files.read([path])
        assert "\n" not in str(e.value)
    paths = write_idx(str(tmp_path / "idx"), gz=())
    with pytest.raises(MnistFormatError, match="missing IDX file.*t10k-labels-idx1-ubyte"):
        mnist_files.read(paths[:3])
    raw = bytearray(open(paths[1], "rb").read())
    raw[3] = 0x03  # a labels file claiming to be images
    open(paths[1], "wb").write(bytes(raw))
    with pytest.raises(MnistFormatError, match="IDX magic 0x00000803, expected 0x00000801"):
        mnist_files.read(paths)
    raw[3] = 0x01
    open(paths[1], "wb").write(bytes(raw[:-1]))  # one label short
    with pytest.raises(MnistFormatError, match=r"the header says \[30\] \(30 bytes\) but 29 bytes follow it"):
        mnist_files.read(paths)
    (tmp_path / "mnist.txt").write_text("")
    with pytest.raises(MnistFormatError, match="cannot tell the format of .*mnist.txt"):
        mnist_files.read([str(tmp_path / "mnist.txt")])


def test_the_standard_check_refuses_other_sizes_counts_and_orders():
    x_train, y_train, x_test, y_test = _arrays()
    std = _standard()
    mnist_local.check(mnist_files.MnistArrays(x_train, y_train, x_test, y_test, "f"), std)  # passes
    bad = mnist_files.MnistArrays(x_train[:-1], y_train[:-1], x_test, y_test, "f")
    with pytest.raises(MnistFormatError, match="29 training and 10 test images; the standard MNIST split has 30 and"):
        mnist_local.check(bad, std)
    y = y_train.copy()
    y[0] = (y[0] + 1) % 10
    with pytest.raises(MnistFormatError, match="training label counts .* differ"):
        mnist_local.check(mnist_files.MnistArrays(x_train, y, x_test, y_test, "f"), std)
    j = int(np.flatnonzero(y_test != y_test[0])[0])  # same counts, another order
    y = y_test.copy()
    y[[0, j]] = y[[j, 0]]
    with pytest.raises(MnistFormatError, match="y_test differs from the standard MNIST's label order"):
        mnist_local.check(mnist_files.MnistArrays(x_train, y_train, x_test, y, "f"), std)
    x = x_train.copy()
    x[[0, 1]] = x[[1, 0]]
    with pytest.raises(MnistFormatError, match=r"x_train differs from the standard MNIST's images \(order or pixels\)"):
        mnist_local.check(mnist_files.MnistArrays(x, y_train, x_test, y_test, "f"), std)


def test_the_real_command_enforces_the_real_split(tmp_path, capsys):
    assert data_cli.main(["import", "mnist", write_npz(str(tmp_path / "mnist.npz"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dp_zoo.data: error: ")
    assert "30 training and 10 test images; the standard MNIST split has 60,000 and 10,000" in err
    assert not os.path.exists(mnist_local.cache_dir())  # nothing written
    assert data_cli.main(["import", "mnist"]) == 1  # no FILE and no Keras copy
    assert "no Keras copy at" in capsys.readouterr().err
    assert mnist_local.MNIST.train_counts == (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
    assert mnist_local.MNIST.test_counts == (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
    assert sum(mnist_local.MNIST.train_counts) == 60_000 and sum(mnist_local.MNIST.test_counts) == 10_000


def test_the_command_imports_a_copy_that_meets_its_standard(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist_local, "MNIST", _standard())
    assert data_cli.main(["import", "mnist", *write_idx(str(tmp_path / "idx"))]) == 0
    out = capsys.readouterr().out
    assert f"into {mnist_local.cache_dir()}" in out and mnist_local.MNIST.sha256["x_train"] in out


# -- through TFDS and the training CLI -----------------------------------------------------------


def test_without_a_copy_mnist_comes_from_tfds_and_records_no_hash(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        tr = data.load_dataset(C.DataConfig(dataset="mnist", data_dir=str(tmp_path)), "train")
    assert tr.images.shape[1:] == (28, 28, 1) and "(TFDS" in tr.split
    assert tr.sha256 is None  # a TFDS directory can hold any data: no fingerprint of it is published


@pytest.mark.slow  # a 2-step training run through the CLI
def test_train_cli_on_the_cached_mnist_records_the_arrays_sha256(tmp_path, monkeypatch):
    from tests.helpers import TINY_TRAIN_ARGS, train_in_process

    std = _standard()
    mnist_local.import_files([write_pkl_gz(str(tmp_path / "mnist.pkl.gz"))], standard=std)
    monkeypatch.setattr(mnist_local, "MNIST", std)
    assert train_in_process(*TINY_TRAIN_ARGS, "--dataset", "mnist", "--batch-size", "16", "--physical-batch-size", "16",
                            "--run-dir", str(tmp_path / "r"), "--nopublish") == 0
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    d = rec["data"]
    x_train, y_train, x_test, y_test = _arrays()
    assert d["dataset"] == "mnist" and d["train_size"] == 30 and rec["privacy"]["dataset_size"] == 30
    assert d["train_sha256"] == {"images": std.sha256["x_train"], "labels": std.sha256["y_train"]}
    assert d["test_sha256"] == {"images": std.sha256["x_test"], "labels": std.sha256["y_test"]}
    assert "public by construction" in d["sha256_note"]


def test_digits_carry_the_sha256_of_their_public_arrays():
    tr = data.load_dataset(C.DataConfig(validation_size=100), "train")
    assert tr.sha256 == {"images": mnist_local.array_sha256(tr.images), "labels": mnist_local.array_sha256(tr.labels)}
    import hashlib

    assert tr.sha256["images"] == hashlib.sha256(tr.images.tobytes()).hexdigest()  # what the note tells users
