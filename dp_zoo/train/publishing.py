"""Old path of ``dp_zoo.jobs.publishing`` (moved in issue #29), kept for one release: import ``dp_zoo.jobs.publishing``."""
import sys

import dp_zoo.jobs.publishing as _new

sys.modules[__name__] = _new
