"""Old path of ``dp_zoo.engine.fit_inputs`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.fit_inputs as _new

sys.modules[__name__] = _new
