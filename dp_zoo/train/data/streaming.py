"""Old path of ``dp_zoo.data.streaming`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.streaming as _new

sys.modules[__name__] = _new
