"""Old path of ``dp_zoo.publish.download`` (issue #29), kept for one release."""
import sys

import dp_zoo.publish.download as _new

sys.modules[__name__] = _new
