"""Model plugins: a package with a ``pagoda.general_plugins`` entry point registers a model class for a made-up
architecture; pagoda runs it in-process (``LLM``) and in the engine-core process (``AsyncLLM``).

The package is written into ``tmp_path`` with a ``.dist-info`` holding ``entry_points.txt`` and put on
``sys.path`` (and ``PYTHONPATH``, inherited by the spawned core), so ``importlib.metadata`` finds it without
installing anything into the shared environment.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys

import pytest
from engine_checks import greedy

ARCH = "ToyPluginForCausalLM"

PLUGIN_INIT = '''
def register():
    import pagoda

    pagoda.ModelRegistry.register_model("ToyPluginForCausalLM", "toy_pagoda_plugin.model:ToyPluginForCausalLM")
'''

PLUGIN_MODEL = '''
from pagoda.models.llama import LlamaForCausalLM


class ToyPluginForCausalLM(LlamaForCausalLM):
    """A Llama under another name (what a real plugin's own model class would be)."""

    supports_cuda_graphs = False

    def __init__(self, hf_config, arch, dtype, quant_config=None):
        super().__init__(hf_config, "LlamaForCausalLM", dtype, quant_config)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin package on sys.path / PYTHONPATH, with pagoda's once-per-process plugin state reset."""
    import pagoda.plugins
    from pagoda.models.registry import ModelRegistry

    site = tmp_path / "site"
    pkg = site / "toy_pagoda_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN_INIT)
    (pkg / "model.py").write_text(PLUGIN_MODEL)
    dist = site / "toy_pagoda_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-pagoda-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pagoda.general_plugins]\ntoy = toy_pagoda_plugin:register\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setattr(pagoda.plugins, "_loaded", False)
    monkeypatch.setattr(ModelRegistry, "_plugins", {})
    yield site
    sys.modules.pop("toy_pagoda_plugin", None)
    sys.modules.pop("toy_pagoda_plugin.model", None)


@pytest.fixture
def plugin_model(tiny, tmp_path):
    folder = tmp_path / "toy-model"
    shutil.copytree(tiny.path("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = [ARCH]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_unknown_before_plugin_loads(plugin_model, monkeypatch):
    import pagoda.plugins
    from pagoda.config import EngineArgs

    monkeypatch.setattr(pagoda.plugins, "_loaded", True)  # as if no plugin were installed
    with pytest.raises(ValueError, match=rf"{ARCH}.*plugin"):
        EngineArgs(model=str(plugin_model)).create_config()


def test_plugin_model_in_llm(plugin, plugin_model, tiny):
    from pagoda import LLM

    llm = LLM(str(plugin_model), dtype="float32")
    model = llm.llm_engine.core.runner.model
    assert type(model).__name__ == ARCH and llm.llm_engine.cfg.model_impl == "pagoda"
    out = llm.generate(["Paris is the capital of"], greedy(8), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == tiny.hf_ref("llama", out.prompt_token_ids).tokens[:8]
    llm.shutdown()


def test_plugin_model_in_engine_core_process(plugin, plugin_model, tiny, monkeypatch):
    from pagoda.config import EngineArgs
    from pagoda.engine.async_llm import AsyncLLM

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = EngineArgs(model=str(plugin_model), dtype="float32", kv_cache_memory_bytes=16 * 2**20)

    async def main():
        eng = AsyncLLM(args)
        await eng.start()
        try:
            last = None
            async for out in eng.add_request("r0", "Paris is the capital of", greedy(8)):
                last = out
            return last
        finally:
            await eng.shutdown()

    out = asyncio.run(main())
    assert out is not None and out.finished
    assert out.outputs[0].token_ids == tiny.hf_ref("llama", out.prompt_token_ids).tokens[:8]


def test_register_model_validates():
    from pagoda.models.registry import ModelRegistry

    with pytest.raises(ValueError, match="pkg.module:Class"):
        ModelRegistry.register_model("XForCausalLM", "no_colon_here")
