"""Old path of ``dp_zoo.engine.step`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.step``."""
import sys

import dp_zoo.engine.step as _new

sys.modules[__name__] = _new
