"""What ``make_private(...).fit(x, y)`` accepts: one clear line for each way x and y can be wrong.

Without these checks a bad label reaches the per-example loss inside the traced DP step,
where TensorFlow reports it as screens of graph errors (out-of-range or negative labels,
one-hot rows) or not at all (float labels cast to int32, i.e. truncated). The messages
describe the caller's own arrays to the caller; nothing here is published.
"""

import numpy as np


def check_fit_arrays(x, y, *, dataset_size, num_classes, input_shape):
    """Returns ``(x, y)`` as arrays fit for the DP step, or raises ``ValueError`` naming the fix.

    Args:
      x: examples ``[N, ...]`` (numbers, already preprocessed).
      y: integer class indices ``[N]`` (or ``[N, 1]``); integral floats such as 3.0 are accepted.
      dataset_size: the N that make_private's accounting was told.
      num_classes: the wrapped model's number of outputs, or None when unknown.
      input_shape: the wrapped model's per-example input shape (None entries are free), or None.

    Returns:
      x as a numeric array, y as an int32 array of shape ``[N]``.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError("fit() needs arrays x [N, ...] and y [N]; got a scalar.")
    if len(x) != len(y):
        raise ValueError(f"fit() got {len(x)} examples in x but {len(y)} labels in y; pass one label per example.")
    if len(x) != dataset_size:
        raise ValueError(
            f"fit() got {len(x)} examples but make_private was told dataset_size={dataset_size}; the "
            "privacy accounting depends on N, so they must match.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"fit() needs numeric x, got dtype {x.dtype}; convert the images to float32.")
    _check_example_shape(x.shape[1:], input_shape)
    return x, _labels(y, num_classes)


def _check_example_shape(got, want):
    if want is None:
        return
    want = tuple(want)
    if len(got) != len(want) or any(w is not None and w != g for g, w in zip(got, want)):
        shown = tuple("any" if w is None else w for w in want)
        raise ValueError(f"fit() got examples of shape {tuple(got)} but the model takes {shown}; reshape x to "
                         f"[N, {', '.join(map(str, shown))}] or build the model for this input shape.")


def _labels(y, num_classes):
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and num_classes is not None and y.shape[1] == num_classes and num_classes > 1:
        raise ValueError(f"fit() got labels of shape {y.shape}, which look one-hot; pass integer class indices "
                         "[N], e.g. y.argmax(axis=1).")
    if y.ndim != 1:
        raise ValueError(f"fit() needs integer labels of shape [N], got shape {y.shape}.")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"fit() needs integer class indices as labels, got dtype {y.dtype}.")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("fit() got non-integer labels (e.g. 2.5 or NaN); labels are class indices "
                             "0..num_classes-1 and would otherwise be truncated.")
    low, high = (y.min(), y.max()) if len(y) else (0, 0)
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else "0 or more"
        bad = low if low < 0 else high
        raise ValueError(f"fit() got label {bad:g}; labels must be class indices in {bound} "
                         f"(the model has {num_classes} outputs).")
    return y.astype(np.int32)
