"""Old path of ``dp_zoo.engine.optim`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.optim``."""
import sys

import dp_zoo.engine.optim as _new

sys.modules[__name__] = _new
