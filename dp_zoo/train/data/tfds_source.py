"""Old path of ``dp_zoo.data.tfds_source`` (issue #29), kept for one release."""
import sys

import dp_zoo.data.tfds_source as _new

sys.modules[__name__] = _new
