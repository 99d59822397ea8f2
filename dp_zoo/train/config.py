"""Old path of ``dp_zoo.recipes.config`` (issue #29), kept for one release."""
import sys

import dp_zoo.recipes.config as _new

sys.modules[__name__] = _new
