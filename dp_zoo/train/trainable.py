"""Old path of ``dp_zoo.engine.trainable`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.trainable``."""
import sys

import dp_zoo.engine.trainable as _new

sys.modules[__name__] = _new
