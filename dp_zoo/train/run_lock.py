"""Old path of ``dp_zoo.engine.run_lock`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.run_lock``."""
import sys

import dp_zoo.engine.run_lock as _new

sys.modules[__name__] = _new
