"""Old path of ``dp_zoo.jobs.init_weights`` (issue #29), kept for one release."""
import sys

import dp_zoo.jobs.init_weights as _new

sys.modules[__name__] = _new
