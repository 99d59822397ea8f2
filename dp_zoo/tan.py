"""Old path of ``dp_zoo.engine.tan`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.tan as _new

sys.modules[__name__] = _new
