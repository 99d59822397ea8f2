"""The command lines: each module's ``main()`` parses flags and calls the layers below.

``train`` (its flags in ``train_flags``), ``tune``, ``export``, ``audit``, ``privacy``, ``data``, ``zoo``,
and ``scripts`` (the console scripts). They run as ``python -m dp_zoo.train``,
``.tune``, ``.export``, ``.audit``, ``.privacy``, ``.data``, ``.zoo`` (the old
module paths stay as command lines); ``python -m dp_zoo.serve`` and
``dp_zoo.train.known_weights`` still run ``main()`` in their ``publish`` module.
"""
