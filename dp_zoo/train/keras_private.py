"""Old path of ``dp_zoo.engine.keras_private`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.keras_private``."""
import sys

import dp_zoo.engine.keras_private as _new

sys.modules[__name__] = _new
