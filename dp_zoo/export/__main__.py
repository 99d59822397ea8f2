"""``python -m dp_zoo.export`` runs ``dp_zoo.commands.export``; imported, this old path (issue #29) is it."""
import sys

if __name__ == "__main__":
    import dp_zoo.commands.export as _command

    sys.exit(_command.main())
else:
    import dp_zoo.commands.export as _new

    sys.modules[__name__] = _new
