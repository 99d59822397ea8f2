"""``Recipe``: a named, reproducible training run, and whose configuration it is.

The recipes themselves are built in ``builders`` and named in ``recipes``
(``RECIPES``, ``get``); this module holds what a recipe is and how its
provenance (a publication's, partly one's and unverified, or dp_zoo's own
choice) is told from ``sources``.
"""

import dataclasses
from typing import Optional

from dp_zoo.recipes import sources as recipe_sources
from dp_zoo.recipes.config import TrainConfig

PAPER = recipe_sources.DE2022
OWN_CHOICE = "dp_zoo's own choice"
# sigma_source of a recipe whose sigma is a publication's as remembered, not read (recipe_sources.UNVERIFIED).
SIGMA_UNVERIFIED = "paper (unverified)"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named, reproducible training run.

    Attributes:
      name: recipe name (also the zoo entry it produces).
      config: the ``TrainConfig``.
      dataset_size: N of the training split dp_zoo trains on (its q = B / N).
      reference: what the recipe reproduces or trains on, in words.
      sigma_source: "paper" (the source's sigma), "paper (unverified)" (a
        publication's sigma as remembered, not read: ``unverified``),
        "calibrated (<accountant>)" or "none (not private)".
      needs_accelerator: True when a CPU cannot run it in reasonable time.
      notes: anything a user should know.
      source: key of ``recipe_sources.PUBLISHED`` when the recipe is that
        publication's configuration; None for dp_zoo's own choice.
      unverified: key of ``recipe_sources.UNVERIFIED`` when the recipe is
        partly a publication's, from numbers not read from it (the paper's
        CIFAR-10 sigma for eps = 2, 4, 8); None otherwise.
    """

    name: str
    config: TrainConfig
    dataset_size: int
    reference: str = ""
    sigma_source: str = ""
    needs_accelerator: bool = True
    notes: str = ""
    source: Optional[str] = None
    unverified: Optional[str] = None

    @property
    def command(self):
        return f"python -m dp_zoo.train --recipe {self.name}"

    @property
    def published(self):
        """The ``recipe_sources.Published`` this recipe is, or None (dp_zoo's own choice)."""
        return recipe_sources.PUBLISHED[self.source] if self.source else None

    @property
    def partly_published(self):
        """The ``recipe_sources.Unverified`` this recipe is built on, or None."""
        return recipe_sources.UNVERIFIED[self.unverified] if self.unverified else None

    @property
    def provenance(self):
        """Whose configuration this is: the publication, partly a publication's (unverified), or dp_zoo's own."""
        if self.published:
            return self.published.publication
        if self.partly_published:
            return f"{self.partly_published.publication}: {self.partly_published.what} (unverified)"
        return OWN_CHOICE

    @property
    def provenance_label(self):
        """A short label for tables: "De2022", "TAN2023", "De2022~" (inferred), "De2022s" (the paper's sigma), "own"."""
        if self.published:
            return recipe_sources.LABELS[self.provenance]
        return self.partly_published.label if self.partly_published else "own"

    @property
    def published_accuracy(self):
        """The source's top-1 (%) for exactly this configuration, or None."""
        return self.published.accuracy if self.published else None

    @property
    def accuracy_source(self):
        """Where ``published_accuracy`` is stated ("" without one)."""
        return self.published.accuracy_source if self.published_accuracy is not None else ""

    @property
    def tan_simulation(self):
        """(factor, citation) of the source's own TAN simulation of this run, or None."""
        sim = recipe_sources.TAN_SIMULATION.get(self.source)
        return (self.config.batch_size // sim[0], sim[1]) if sim else None

    @property
    def simulation_command(self):
        """The ``--tan-simulate`` command of the source's simulation, or None."""
        sim = self.tan_simulation
        return f"{self.command} --tan-simulate {sim[0]}" if sim else None
