"""Old path of ``dp_zoo.recipes.sources`` (issue #29), kept for one release."""
import sys

import dp_zoo.recipes.sources as _new

sys.modules[__name__] = _new
