"""Old path of ``dp_zoo.data.catalogue`` (moved in issue #29), kept for one release: import ``dp_zoo.data.catalogue``."""
import sys

import dp_zoo.data.catalogue as _new

sys.modules[__name__] = _new
