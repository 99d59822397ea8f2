"""Old path of ``dp_zoo.engine.trainer`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.trainer``."""
import sys

import dp_zoo.engine.trainer as _new

sys.modules[__name__] = _new
