"""Old path of ``dp_zoo.engine.checkpoint`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.checkpoint``."""
import sys

import dp_zoo.engine.checkpoint as _new

sys.modules[__name__] = _new
