"""The training engine: the ``Trainer`` loop and everything it runs.

``trainer`` (the loop), ``step`` (the compiled replica step and noisy update),
``optim``, ``checkpoint`` (checkpoints, the privacy journal), ``resolve``
(steps, σ, configuration checks), ``run_secret``, ``evaluation``,
``reporting``, ``record_sections`` (the engine's run-record sections),
``record_builder`` (the run record's one writer), ``record_schema`` (its
schema and ``check_run_record``),
``trainable``, ``linear_probe``, ``run_lock``, ``tan`` (TAN simulation), and
``keras_private`` with ``fit_inputs`` (``dp_zoo.make_private``).
"""
