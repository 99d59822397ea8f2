"""``python -m dp_zoo.zoo`` runs ``dp_zoo.commands.zoo``; imported, this old path (issue #29) is
``dp_zoo.publish.zoo``.
"""
import sys

if __name__ == "__main__":
    import dp_zoo.commands.zoo as _command

    sys.exit(_command.main())
else:
    import dp_zoo.publish.zoo as _new

    sys.modules[__name__] = _new
