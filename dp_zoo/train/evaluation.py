"""Old path of ``dp_zoo.engine.evaluation`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.evaluation as _new

sys.modules[__name__] = _new
