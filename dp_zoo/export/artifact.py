"""Old path of ``dp_zoo.publish.artifact`` (moved in issue #29), kept for one release: import ``dp_zoo.publish.artifact``."""
import sys

import dp_zoo.publish.artifact as _new

sys.modules[__name__] = _new
