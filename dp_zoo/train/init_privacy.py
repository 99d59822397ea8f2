"""Old path of ``dp_zoo.jobs.init_privacy`` (moved in issue #29), kept for one release: import ``dp_zoo.jobs.init_privacy``."""
import sys

import dp_zoo.jobs.init_privacy as _new

sys.modules[__name__] = _new
