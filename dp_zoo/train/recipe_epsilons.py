"""``python -m dp_zoo.train.recipe_epsilons``: ``dp_zoo.recipes.epsilons`` (an old path, issue #29)."""
import sys

if __name__ == "__main__":
    import dp_zoo.recipes.epsilons as _command

    sys.exit(_command.main())
else:
    import dp_zoo.recipes.epsilons as _new

    sys.modules[__name__] = _new
