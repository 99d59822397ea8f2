"""Old path of ``dp_zoo.cards.model_card`` (issue #29), kept for one release."""
import sys

import dp_zoo.cards.model_card as _new

sys.modules[__name__] = _new
