"""Old path of ``dp_zoo.recipes.search_spaces`` (moved in issue #29), kept for one release: import ``dp_zoo.recipes.search_spaces``."""
import sys

import dp_zoo.recipes.search_spaces as _new

sys.modules[__name__] = _new
