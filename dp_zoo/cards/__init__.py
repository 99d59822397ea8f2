"""What a run leaves behind for a reader: the run record and the model card.

``run_record`` (``complete``; the record's schema and checks, from
``dp_zoo.engine.record_schema``), ``model_card`` (a card from
a record), ``markdown`` (README.md), ``html`` (card.html and its plots) and
``check`` (a card against its record, the record's ε against the
accountant). The folder is ``cards``, not ``card``: ``dp_zoo.card`` is the
public function.
"""
