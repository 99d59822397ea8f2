"""``python -m dp_zoo.train.recipe_epsilons``: runs ``dp_zoo.recipes.epsilons`` (moved in issue #29); as an import, an old path kept for one release."""
import sys

if __name__ == "__main__":
    import dp_zoo.recipes.epsilons as _command

    sys.exit(_command.main())
else:
    import dp_zoo.recipes.epsilons as _new

    sys.modules[__name__] = _new
