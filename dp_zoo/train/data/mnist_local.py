"""Old path of ``dp_zoo.data.mnist_local`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.mnist_local as _new

sys.modules[__name__] = _new
