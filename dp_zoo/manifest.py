"""Old path of ``dp_zoo.publish.manifest`` (moved in issue #29), kept for one release: import ``dp_zoo.publish.manifest``."""
import sys

import dp_zoo.publish.manifest as _new

sys.modules[__name__] = _new
