"""What a run is, before anything runs: configurations, named recipes, their sources and ε, search spaces.

No TensorFlow is imported here (the zoo lists its entries from these modules):
``config`` (the dataclasses), ``recipe`` (what a recipe is, whose
configuration), ``builders`` (the recipes, family by family), ``recipes``
(``RECIPES``, ``get``), ``sources`` (published configurations, each number
cited), ``epsilons`` (the accountant's ε per recipe, kept in
``epsilons.json``) and ``search_spaces`` (the tuner's grids from public
sources). Which recipe ``--model ARCH`` starts from is not kept here: each
model family registers its default recipe, by name, in ``dp_zoo/models/``.
"""
