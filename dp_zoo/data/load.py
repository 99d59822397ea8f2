"""``load_dataset``: one split of a configured data set, from the source that holds it."""

from dp_zoo.data import digits, mnist_local, tfds_source
from dp_zoo.data.catalogue import DATASETS, SPLITS


def load_dataset(data_config, split, streaming=None):
    """Loads one split of the configured data set into memory, or streams it.

    Args:
      data_config: ``DataConfig``.
      split: "train", "validation" or "test".
      streaming: True: a ``StreamingDataset`` (TFDS data prepared as
        array_record); False: in memory (refused if it does not fit);
        None: in memory if it fits, else streamed.

    Returns:
      ``Dataset`` or ``StreamingDataset``.

    Raises:
      ValueError: unknown data set or split.
      DataUnavailableError: a TFDS data set is not prepared and cannot be
        downloaded; the message says how to get it.
      MnistFormatError: dp_zoo's MNIST copy (or Keras' mnist.npz, imported on
        first use) fails its checks.
    """
    _check(data_config, split)
    if data_config.dataset == "digits":
        if streaming:
            raise ValueError("streaming reads TFDS data sets prepared as array_record; the embedded digits "
                             "data set is 1,797 small images and is always held in memory.")
        return digits.load(data_config, split)
    if data_config.dataset == "mnist":
        # dp_zoo's checked copy (python -m dp_zoo.data import mnist FILE) when there is one, else TFDS.
        local = mnist_local.load(data_config, split, streaming)
        if local is not None:
            return local
    return tfds_source.load(data_config, split, streaming)


def _check(data_config, split):
    if data_config.dataset not in DATASETS:
        from dp_zoo.models._registry import unknown_name_message

        raise ValueError(unknown_name_message("dataset", data_config.dataset, list(DATASETS)))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if data_config.validation_size < 0:
        raise ValueError("validation_size must be >= 0.")
