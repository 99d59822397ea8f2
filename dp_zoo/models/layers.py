"""Keras 3 layers shared by the model families.

WSConv2D (weight standardization, Qiao et al. 2019; as used by De et al.
2022's WideResNets), ScaledWSConv2D and the scaled activations of NF-ResNets
and NFNets (Brock et al. 2021), SkipInit gain, per-example StochasticDepth
and Squeeze-Excite. All math uses ``keras.ops``.
"""

import keras
from keras import ops
