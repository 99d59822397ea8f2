"""Old path of ``dp_zoo.cards.model_card`` (moved in issue #29), kept for one release: import ``dp_zoo.cards.model_card``."""
import sys

import dp_zoo.cards.model_card as _new

sys.modules[__name__] = _new
