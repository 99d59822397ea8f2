"""Old path of ``dp_zoo.cards.run_record`` (moved in issue #29), kept for one release: import ``dp_zoo.cards.run_record``."""
import sys

import dp_zoo.cards.run_record as _new

sys.modules[__name__] = _new
