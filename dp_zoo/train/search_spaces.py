"""Old path of ``dp_zoo.recipes.search_spaces`` (issue #29), kept for one release."""
import sys

import dp_zoo.recipes.search_spaces as _new

sys.modules[__name__] = _new
