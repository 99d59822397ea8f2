"""Old path of ``dp_zoo.engine.linear_probe`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.linear_probe as _new

sys.modules[__name__] = _new
