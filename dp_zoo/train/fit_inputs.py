"""Old path of ``dp_zoo.engine.fit_inputs`` (moved in issue #29), kept for one release: import ``dp_zoo.engine.fit_inputs``."""
import sys

import dp_zoo.engine.fit_inputs as _new

sys.modules[__name__] = _new
