"""Old paths (issue #29), kept for one release: ``python -m dp_zoo.train`` and ``dp_zoo.train.<module>``.

Training now lives in layer folders: ``dp_zoo.recipes`` (configs, recipes,
search spaces), ``dp_zoo.data`` (data sets, sampling), ``dp_zoo.engine`` (the
trainer, its step, checkpoints, ``make_private``), ``dp_zoo.jobs`` (a training
run: ``jobs/training.py``) and ``dp_zoo.commands`` (``commands/train.py``, the
command line). Each module here is the moved module itself under its old name.
"""
