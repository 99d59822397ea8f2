"""Old path of ``dp_zoo.cards.run_record`` (issue #29), kept for one release."""
import sys

import dp_zoo.cards.run_record as _new

sys.modules[__name__] = _new
