"""The command lines: each module's ``main()`` parses flags and calls the layers below.

``train``, ``tune``, ``export``, ``audit``, ``privacy``, ``data``, and
``scripts`` (the console scripts). They run as ``python -m dp_zoo.train``,
``.tune``, ``.export``, ``.audit``, ``.privacy``, ``.data`` (the old module
paths stay as command lines); ``python -m dp_zoo.zoo``, ``.serve`` and
``dp_zoo.train.known_weights`` run ``main()`` in their ``publish`` module.
"""
