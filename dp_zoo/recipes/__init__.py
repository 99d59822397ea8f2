"""What a run is, before anything runs: configurations, named recipes, their sources and ε, search spaces.

No TensorFlow is imported here (the zoo lists its entries from these modules):
``config`` (the dataclasses), ``recipe`` (what a recipe is, whose
configuration), ``builders`` (the recipes, family by family), ``recipes``
(``RECIPES``, ``get``, each architecture's default recipe), ``sources``
(published configurations, each number cited), ``epsilons`` (the
accountant's ε per recipe, kept in ``epsilons.json``) and ``search_spaces``
(the tuner's grids from public sources).
"""
