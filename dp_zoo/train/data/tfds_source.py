"""Old path of ``dp_zoo.data.tfds_source`` (moved in issue #29), kept for one release: import ``dp_zoo.data.tfds_source``."""
import sys

import dp_zoo.data.tfds_source as _new

sys.modules[__name__] = _new
