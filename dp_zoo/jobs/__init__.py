"""Jobs: a whole training run put together from the layers below.

``training`` (build, fit, record, publish: what ``python -m dp_zoo.train``
and the tuner's trials run), ``tuning`` (the ``Tuner``: private
hyper-parameter tuning), ``init_weights`` and ``init_privacy`` (an
``--init`` checkpoint or zoo model, and what its privacy composes with),
``publishing`` (the publish target, its checks before training), and
``strategy`` (the ``tf.distribute`` strategy, what its workers must agree on).
"""
