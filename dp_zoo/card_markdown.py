"""Old path of ``dp_zoo.cards.markdown`` (moved in issue #29), kept for one release: import ``dp_zoo.cards.markdown``."""
import sys

import dp_zoo.cards.markdown as _new

sys.modules[__name__] = _new
