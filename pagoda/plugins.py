"""General plugins: entry points of group ``pagoda.general_plugins`` (vLLM's ``vllm.general_plugins``).

Each entry point names a callable taking no arguments; it runs once per process, before the model
is resolved (``EngineArgs.create_config``, which every process runs: the offline ``LLM``, the API
server and the engine-core process), and typically calls ``pagoda.ModelRegistry.register_model``.
A plugin that fails to load or run stops start-up with its name.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

logger = logging.getLogger("pagoda")

PLUGIN_GROUP = "pagoda.general_plugins"

_loaded = False


def load_general_plugins() -> list[str]:
    """Load and call every plugin of :data:`PLUGIN_GROUP` (once per process). Returns their names."""
    global _loaded
    if _loaded:
        return []
    _loaded = True
    names = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()()
        except Exception as e:
            raise RuntimeError(f"pagoda plugin {ep.name!r} ({ep.value}) failed: {type(e).__name__}: {e}") from e
        names.append(ep.name)
    if names:
        logger.info("Loaded pagoda plugins: %s", ", ".join(names))
    return names
