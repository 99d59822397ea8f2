"""Old path of ``dp_zoo.engine.tan`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.tan``."""
import sys

import dp_zoo.engine.tan as _new

sys.modules[__name__] = _new
