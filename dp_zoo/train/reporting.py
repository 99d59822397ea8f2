"""Old path of ``dp_zoo.engine.reporting`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.reporting as _new

sys.modules[__name__] = _new
