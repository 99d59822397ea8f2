"""Old path of ``dp_zoo.data.load`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.load as _new

sys.modules[__name__] = _new
