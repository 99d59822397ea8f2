"""Old path of ``dp_zoo.data.load`` (moved in issue #29), kept for one release: import ``dp_zoo.data.load``."""
import sys

import dp_zoo.data.load as _new

sys.modules[__name__] = _new
