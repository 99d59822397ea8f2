"""Old path of ``dp_zoo.jobs.init_privacy`` (issue #29), kept for one release."""
import sys

import dp_zoo.jobs.init_privacy as _new

sys.modules[__name__] = _new
