"""``python -m dp_zoo.data`` (and ``dp-zoo-data``): ``dp_zoo.commands.data``."""
import sys

from dp_zoo.commands import data as _command

if __name__ == "__main__":
    sys.exit(_command.main())
