"""Old path of ``dp_zoo.data.image_ops`` (moved in issue #29), kept for one release: import ``dp_zoo.data.image_ops``."""
import sys

import dp_zoo.data.image_ops as _new

sys.modules[__name__] = _new
