"""Old path of ``dp_zoo.recipes.recipes`` (moved in issue #29), kept for one release: import ``dp_zoo.recipes.recipes``."""
import sys

import dp_zoo.recipes.recipes as _new

sys.modules[__name__] = _new
