"""Old path of ``dp_zoo.engine.optim`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.optim as _new

sys.modules[__name__] = _new
