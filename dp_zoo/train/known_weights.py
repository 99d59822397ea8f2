"""``python -m dp_zoo.train.known_weights``: ``dp_zoo.publish.known_weights`` (an old path, issue #29)."""
import sys

if __name__ == "__main__":
    import dp_zoo.publish.known_weights as _command

    sys.exit(_command.main())
else:
    import dp_zoo.publish.known_weights as _new

    sys.modules[__name__] = _new
