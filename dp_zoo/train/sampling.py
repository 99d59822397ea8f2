"""Old path of ``dp_zoo.data.sampling`` (moved in issue #29), kept for one release: import ``dp_zoo.data.sampling``."""
import sys

import dp_zoo.data.sampling as _new

sys.modules[__name__] = _new
