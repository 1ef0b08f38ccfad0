"""The Mamba backbone: `[B, L, D]` embeddings -> `[B, L, D]` hidden states, with O(1)-per-token decoding.

from backbone import MambaBackbone, MambaConfig
model = MambaBackbone(MambaConfig(d_model=256, n_layer=4))
"""

from backbone.cache import LayerCache, MambaCache
from backbone.config import MambaConfig
from backbone.model import MambaBackbone

__all__ = ["LayerCache", "MambaBackbone", "MambaCache", "MambaConfig"]
