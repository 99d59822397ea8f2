"""Old path of ``dp_zoo.data.digits`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.digits as _new

sys.modules[__name__] = _new
