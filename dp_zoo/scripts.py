"""Old path of ``dp_zoo.commands.scripts`` (moved in issue #29), kept for one release: import ``dp_zoo.commands.scripts``."""
import sys

import dp_zoo.commands.scripts as _new

sys.modules[__name__] = _new
