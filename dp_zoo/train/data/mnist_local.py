"""Old path of ``dp_zoo.data.mnist_local`` (moved in issue #29), kept for one release: import ``dp_zoo.data.mnist_local``."""
import sys

import dp_zoo.data.mnist_local as _new

sys.modules[__name__] = _new
