"""Artifacts and the zoo: export, checksums, registration, download, loading and serving.

``manifest`` (checksums), ``artifact`` (export, checks, packaging,
publishing), ``zoo`` (``dp_zoo.load``, ``card``, the table in ``zoo_entries.json``),
``listing`` (``dp_zoo.list_models``), ``download``, ``pretrained`` (``dp_zoo.create_model``
with ``pretrained=``), ``known_weights`` (which published artifact a weight
file is a copy of, ``known_weights.json``) and ``serve`` (the REST server).
"""
