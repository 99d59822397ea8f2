"""Old path of ``dp_zoo.jobs.init_weights`` (moved in issue #29), kept for one release: import ``dp_zoo.jobs.init_weights``."""
import sys

import dp_zoo.jobs.init_weights as _new

sys.modules[__name__] = _new
