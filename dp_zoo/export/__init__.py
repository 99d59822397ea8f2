"""Exporting and publishing a trained model: ``saved_models/<entry>/`` with its card.

Layout::

    saved_models/<entry>/
      model.keras            Keras 3 model (normalized float input -> logits)
      saved_model/1/         TF Serving layout; serving_default takes uint8
                             images [N, H, W, C] (preprocessing in the graph)
                             and returns {"probabilities", "logits"}
      card.json README.md card.html plots/*.png
      run_record.json        the record the card was built from
      MANIFEST.json          SHA-256 and size of every other file

The SavedModel loads with ``tf.saved_model.load``, ``tensorflow_hub.load``,
``keras.layers.TFSMLayer``, ``saved_model_cli`` and TF Serving.

Export is atomic (written to a temporary sibling directory, checked, then
renamed), refuses to overwrite an existing artifact unless asked (and even
then replaces only a dp_zoo artifact: an empty directory, or one holding
nothing its MANIFEST does not list; never a folder of someone's files), refuses a
model with non-finite weights or one that does not match its run record, and
checks that the written ``.keras`` file and SavedModel reproduce the model's
outputs before anything is put in place.

Command line (``python -m dp_zoo.export``, in ``commands/export.py``)::

    # export a trained model with its run record
    python -m dp_zoo.export --model run/model.keras --run-record run/run_record.json \\
        --entry wrn_digits_eps8 --out saved_models/wrn_digits_eps8
    # write the artifact's checksum into the zoo table (dp_zoo/publish/zoo_entries.json)
    python -m dp_zoo.export --artifact saved_models/wrn_digits_eps8 --register
    # a reproducible .tar.gz for a URL-hosted release
    python -m dp_zoo.export --artifact saved_models/wrn_digits_eps8 --package dist/wrn_digits_eps8.tar.gz
    # Kaggle Models (needs kagglehub and Kaggle credentials; --dry-run checks and lists only)
    python -m dp_zoo.export --artifact saved_models/wrn_digits_eps8 \\
        --kaggle-handle OWNER/dp-zoo/keras/wrn_digits_eps8 --dry-run
"""

import importlib

# name -> the module that defines it (``dp_zoo/publish/artifact.py`` since issue #29). Loaded on first
# use, so that ``python -m dp_zoo.export`` can quiet TensorFlow before ``artifact`` imports it.
_ARTIFACT = "dp_zoo.publish.artifact"
_LAZY = {"export_model": _ARTIFACT, "check_publishable": _ARTIFACT, "package": _ARTIFACT,
         "publish": _ARTIFACT, "SERVING_VERSION": _ARTIFACT}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
