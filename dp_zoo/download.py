"""Old path of ``dp_zoo.publish.download`` (moved in issue #29), kept for one release: import ``dp_zoo.publish.download``."""
import sys

import dp_zoo.publish.download as _new

sys.modules[__name__] = _new
