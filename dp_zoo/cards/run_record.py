"""The run record: its schema and validation, and how the training command completes it.

A run record (``run_record.json``, docs/design.md "The run record") has one
writer, ``dp_zoo.engine.record_builder.RunRecordBuilder``: the engine sets
the sections it alone knows (config, privacy, history, model, software,
hardware, operational, the step counts), the training command adds its own at
the end (``complete``: metrics, data, the initial checkpoint's provenance, the
entry name and which weights are published) and ``dp_zoo.audit`` may add an
"audit" section. ``check_run_record`` is the one validation every card and
export goes through; the schema and the check live in
``dp_zoo.engine.record_schema``, below the builder that uses them, and are
re-exported here under their old names.
"""

from dp_zoo.engine.record_builder import RunRecordBuilder
from dp_zoo.engine.record_schema import (
    PUBLISHED_WEIGHTS_SHA256, REQUIRED_PRIVACY, REQUIRED_SECTIONS, TRIAL_DISTRIBUTION_ALLOWED, TUNING_ALLOWED,
    TUNING_KEYS, check_run_record,
)

__all__ = ["PUBLISHED_WEIGHTS_SHA256", "REQUIRED_PRIVACY", "REQUIRED_SECTIONS", "TRIAL_DISTRIBUTION_ALLOWED",
           "TUNING_ALLOWED", "TUNING_KEYS", "check_run_record", "complete"]


def complete(record, *, metrics, data, init, entry_name, published_weights):
    """Adds the training command's sections to the engine's ``record`` (in place; returns it).

    ``RunRecordBuilder.set_command`` under its old name; it refuses a record
    whose command sections are already set.

    Args:
      record: what ``Trainer.fit()`` / ``Trainer.record()`` returned.
      metrics: test accuracies of the published weight sets and ``evaluated_on``.
      data: the data section (data set, splits, sizes, normalisation, streaming).
      init: the initial checkpoint's provenance dict, or None.
      entry_name: the zoo entry name of the run.
      published_weights: "ema" or "last".
    """
    return RunRecordBuilder.from_record(record).set_command(
        metrics=metrics, data=data, init=init, entry_name=entry_name, published_weights=published_weights,
    ).build(check=False)
