"""Old path of ``dp_zoo.data.image_ops`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.image_ops as _new

sys.modules[__name__] = _new
