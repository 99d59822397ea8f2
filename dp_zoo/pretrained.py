"""Old path of ``dp_zoo.publish.pretrained`` (issue #29), kept for one release."""
import sys

import dp_zoo.publish.pretrained as _new

sys.modules[__name__] = _new
