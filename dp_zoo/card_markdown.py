"""Old path of ``dp_zoo.cards.markdown`` (issue #29), kept for one release."""
import sys

import dp_zoo.cards.markdown as _new

sys.modules[__name__] = _new
