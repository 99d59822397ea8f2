"""Old path of ``dp_zoo.data.catalogue`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.catalogue as _new

sys.modules[__name__] = _new
