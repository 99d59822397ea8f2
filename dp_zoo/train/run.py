"""Old path of ``dp_zoo.jobs.training`` (issue #29), kept for one release."""
import sys

import dp_zoo.jobs.training as _new

sys.modules[__name__] = _new
