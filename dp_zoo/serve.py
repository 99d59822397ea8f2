"""``python -m dp_zoo.serve`` runs ``dp_zoo.publish.serve``; imported, this old path (issue #29) is it."""
import sys

if __name__ == "__main__":
    from dp_zoo import cli

    cli.quiet_tensorflow()  # before the command imports TensorFlow
    import dp_zoo.publish.serve as _command

    sys.exit(_command.main())
else:
    import dp_zoo.publish.serve as _new

    sys.modules[__name__] = _new
