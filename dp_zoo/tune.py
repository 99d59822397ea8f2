"""``python -m dp_zoo.tune``: runs ``dp_zoo.commands.tune`` (moved in issue #29); as an import, an old path kept for one release."""
import sys

if __name__ == "__main__":
    from dp_zoo import cli

    cli.quiet_tensorflow()  # before the command imports TensorFlow
    import dp_zoo.commands.tune as _command

    sys.exit(_command.main())
else:
    import dp_zoo.commands.tune as _new

    sys.modules[__name__] = _new
