"""Old path of ``dp_zoo.engine.run_secret`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.run_secret as _new

sys.modules[__name__] = _new
