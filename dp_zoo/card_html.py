"""Old path of ``dp_zoo.cards.html`` (moved in issue #29), kept for one release: import ``dp_zoo.cards.html``."""
import sys

import dp_zoo.cards.html as _new

sys.modules[__name__] = _new
