"""Weight import and export between our Keras models and foreign formats.

- ``timm.py``: timm (PyTorch) state dicts <-> NF-ResNets and NFNets
  (``from_timm_state_dict``, ``to_timm_state_dict``).
- ``haiku.py``: Haiku parameter trees <-> NFNets (DeepMind's) and
  WideResNets (jax_privacy's) (``from_deepmind_nfnet``, ``from_haiku_wrn``,
  their inverses, ``load_haiku_into`` for fine-tuning); the names they use
  and their sources are in ``haiku_names.py``.
- ``haiku_files.py``: reading the checkpoint files without Haiku, JAX or
  (usually) dill (``load_haiku_checkpoint``), and writing npz
  (``save_haiku_checkpoint``).

Every converter uses each foreign tensor exactly once and checks its shape;
anything else is an error naming the keys, never a silent partial load.
"""

from dp_zoo.models.convert.haiku import (  # noqa: F401
    flatten_haiku_params, from_deepmind_nfnet, from_haiku_wrn, load_haiku_into, to_deepmind_nfnet, to_haiku_wrn,
    unflatten_haiku_params,
)
from dp_zoo.models.convert.haiku_files import load_haiku_checkpoint, save_haiku_checkpoint  # noqa: F401
from dp_zoo.models.convert.haiku_names import deepmind_nfnet_name, haiku_wrn_name  # noqa: F401
from dp_zoo.models.convert.timm import from_timm_state_dict, timm_name, to_timm_state_dict  # noqa: F401
