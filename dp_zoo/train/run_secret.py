"""Old path of ``dp_zoo.engine.run_secret`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.run_secret``."""
import sys

import dp_zoo.engine.run_secret as _new

sys.modules[__name__] = _new
