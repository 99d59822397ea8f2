"""``python -m dp_zoo.train.known_weights``: runs ``dp_zoo.publish.known_weights`` (moved in issue #29); as an import, an old path kept for one release."""
import sys

if __name__ == "__main__":
    import dp_zoo.publish.known_weights as _command

    sys.exit(_command.main())
else:
    import dp_zoo.publish.known_weights as _new

    sys.modules[__name__] = _new
