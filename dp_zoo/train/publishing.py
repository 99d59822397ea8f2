"""Old path of ``dp_zoo.jobs.publishing`` (issue #29), kept for one release."""
import sys

import dp_zoo.jobs.publishing as _new

sys.modules[__name__] = _new
