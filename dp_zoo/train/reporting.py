"""Old path of ``dp_zoo.engine.reporting`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.reporting``."""
import sys

import dp_zoo.engine.reporting as _new

sys.modules[__name__] = _new
