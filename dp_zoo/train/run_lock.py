"""Old path of ``dp_zoo.engine.run_lock`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.run_lock as _new

sys.modules[__name__] = _new
