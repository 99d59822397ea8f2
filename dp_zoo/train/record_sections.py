"""Old path of ``dp_zoo.engine.record_sections`` (issue #29), kept for one release."""
import sys

import dp_zoo.engine.record_sections as _new

sys.modules[__name__] = _new
