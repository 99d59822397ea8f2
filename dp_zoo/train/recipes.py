"""Old path of ``dp_zoo.recipes.recipes`` (issue #29), kept for one release."""
import sys

import dp_zoo.recipes.recipes as _new

sys.modules[__name__] = _new
