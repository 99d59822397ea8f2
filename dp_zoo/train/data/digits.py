"""Old path of ``dp_zoo.data.digits`` (moved in issue #29), kept for one release: import ``dp_zoo.data.digits``."""
import sys

import dp_zoo.data.digits as _new

sys.modules[__name__] = _new
