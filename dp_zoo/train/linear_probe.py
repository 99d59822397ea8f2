"""Old path of ``dp_zoo.engine.linear_probe`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.linear_probe``."""
import sys

import dp_zoo.engine.linear_probe as _new

sys.modules[__name__] = _new
