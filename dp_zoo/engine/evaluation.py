"""Evaluation of a trainer's weights: the last, EMA or Polyak-averaged ones.

Only evaluation-split metrics come out of here; the ``Trainer`` owns the
variables and passes them in.
"""

import keras
import numpy as np

from dp_zoo import preprocessing
from dp_zoo.engine import trainable


def published_weights(ema_vars):
    """Which weights a run publishes, and a tuning trial is scored on: "ema" when EMA is on, else "last"."""
    return "ema" if ema_vars is not None else "last"


def weights_for(model, ema_vars, polyak_vars, params):
    """The ``params`` weights ("last", "ema" or "polyak") as numpy arrays, in trainable-variable order."""
    if params == "last":
        return [v.numpy() for v in model.trainable_variables]
    if params == "ema":
        if ema_vars is None:
            raise ValueError("EMA is off in this run (ema.decay is None).")
        return [v.numpy() for v in ema_vars]
    if params == "polyak":
        if polyak_vars is None:
            raise ValueError("Polyak averaging is off in this run (ema.polyak_start is None).")
        return [v.numpy() for v in polyak_vars]
    raise ValueError(f"params must be 'last', 'ema' or 'polyak', got {params!r}.")


def model_copy(model, input_shape, weights):
    """A copy of ``model`` whose trained variables carry ``weights``, the rest copied; nothing in it frozen."""
    clone = keras.models.clone_model(model)
    clone.build((None,) + input_shape)
    clone.set_weights(model.get_weights())
    # ``weights`` follow the model's trained variables (a fine-tune may freeze
    # some, and the clone's trainable flags need not match): placed by position.
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    for c, v in zip(clone.variables, model.variables):
        if id(v) in position:
            c.assign(weights[position[id(v)]])
    # Published copies load and fine-tune like any other model: nothing frozen.
    return trainable.unfreeze(clone, model)


def evaluate(model, weights, dataset, mean, std, batch_size=512):
    """Accuracy and mean loss of ``model`` carrying ``weights`` on ``dataset``.

    The weights are swapped in and the model's own put back afterwards, also
    on error, so that training continues from its last weights.
    """
    saved = [v.numpy() for v in model.trainable_variables]
    try:
        for v, w in zip(model.trainable_variables, weights):
            v.assign(w)
        correct, loss_sum = 0, 0.0
        features = bool(getattr(dataset, "features", False))
        for i in range(0, len(dataset), batch_size):
            if features:  # linear probing: [b, 1, D], the un-augmented view's features
                x = dataset.images[i:i + batch_size][:, 0]
            else:
                x = preprocessing.normalize(dataset.images[i:i + batch_size], mean, std)
            y = dataset.labels[i:i + batch_size]
            logits = model(x, training=False)
            correct += int(np.sum(np.argmax(logits.numpy(), 1) == y))
            loss_sum += float(np.sum(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
        n = max(len(dataset), 1)
        return {"accuracy": correct / n, "loss": loss_sum / n}
    finally:
        for v, w in zip(model.trainable_variables, saved):
            v.assign(w)
