"""``python -m dp_zoo.privacy``: runs ``dp_zoo.commands.privacy`` (moved in issue #29); as an import, an old path kept for one release."""
import sys

if __name__ == "__main__":
    from dp_zoo import cli

    cli.quiet_tensorflow()  # before the command imports TensorFlow
    import dp_zoo.commands.privacy as _command

    sys.exit(_command.main())
else:
    import dp_zoo.commands.privacy as _new

    sys.modules[__name__] = _new
