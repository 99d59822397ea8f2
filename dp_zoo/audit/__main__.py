"""``python -m dp_zoo.audit`` runs ``dp_zoo.commands.audit``; imported, this old path (issue #29) is it."""
import sys

if __name__ == "__main__":
    from dp_zoo import cli

    cli.quiet_tensorflow()  # before the command imports TensorFlow
    import dp_zoo.commands.audit as _command

    sys.exit(_command.main())
else:
    import dp_zoo.commands.audit as _new

    sys.modules[__name__] = _new
