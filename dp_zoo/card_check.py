"""Old path of ``dp_zoo.cards.check`` (moved in issue #29), kept for one release: import ``dp_zoo.cards.check``."""
import sys

import dp_zoo.cards.check as _new

sys.modules[__name__] = _new
