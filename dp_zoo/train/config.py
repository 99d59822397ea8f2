"""Old path of ``dp_zoo.recipes.config`` (moved in issue #29), kept for one release: import ``dp_zoo.recipes.config``."""
import sys

import dp_zoo.recipes.config as _new

sys.modules[__name__] = _new
