"""Old path of ``dp_zoo.engine.keras_private`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.keras_private as _new

sys.modules[__name__] = _new
