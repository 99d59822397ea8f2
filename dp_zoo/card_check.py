"""Old path of ``dp_zoo.cards.check`` (issue #29), kept for one release."""
import sys

import dp_zoo.cards.check as _new

sys.modules[__name__] = _new
