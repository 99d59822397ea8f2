"""Old path of ``dp_zoo.recipes.sources`` (moved in issue #29), kept for one release: import ``dp_zoo.recipes.sources``."""
import sys

import dp_zoo.recipes.sources as _new

sys.modules[__name__] = _new
