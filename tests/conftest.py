"""Session fixtures: each tiny model is built once, and LLMs / HF models are cached per configuration.

``tiny`` hands out (lazily, so a run of one file builds only what it uses):

* ``tiny.path(arch)``: the folder of the tiny random model of ``arch``;
* ``tiny.llm(arch, **kwargs)``: a cached ``LLM`` for that model and keyword arguments
  (fp32 unless ``dtype`` is given). Tests that share one must leave it idle and clean;
* ``tiny.hf(arch, dtype)``: the HF transformers model on the same weights;
* ``tiny.hf_ref(arch, prompt, dtype)``: the cached HF greedy reference of one prompt.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors only in Triton's interpreter, chosen when triton is first imported: set it
    # before any test module is collected (a GPU test module that imports a kernel module is collected first).
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

from engine_checks import NEW_TOKENS, HFRef, hf_greedy  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402


class TinyModels:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[str, Path] = {}
        self._llms: dict[tuple, object] = {}
        self._hf: dict[tuple, object] = {}
        self._refs: dict[tuple, HFRef] = {}

    def path(self, arch: str) -> Path:
        """``arch`` is a key of tiny_models.ARCH_CONFIGS, optionally with ``-tied`` (tied embeddings)."""
        if arch not in self._paths:
            base, _, variant = arch.partition("-")
            self._paths[arch] = build_tiny_model(self.root / arch, base, tie=variant == "tied")
        return self._paths[arch]

    def llm(self, arch: str, **kwargs):
        from pagoda import LLM

        kwargs.setdefault("dtype", "float32")
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in self._llms:
            self._llms[key] = LLM(str(self.path(arch)), **kwargs)
        return self._llms[key]

    def hf(self, arch: str, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM

        key = (arch, dtype)
        if key not in self._hf:
            m = AutoModelForCausalLM.from_pretrained(self.path(arch), dtype=dtype)
            self._hf[key] = m.eval()
        return self._hf[key]

    def hf_ref(self, arch: str, prompt_ids: list[int], dtype: torch.dtype = torch.float32,
               max_new_tokens: int = NEW_TOKENS) -> HFRef:
        key = (arch, tuple(prompt_ids), dtype, max_new_tokens)
        if key not in self._refs:
            self._refs[key] = hf_greedy(self.hf(arch, dtype), prompt_ids, max_new_tokens)
        return self._refs[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    logging.getLogger("pagoda").setLevel(logging.WARNING)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:
        pass
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def llama_llm(tiny):
    """The shared fp32 Llama engine most behaviour tests use."""
    return tiny.llm("llama")


@pytest.fixture(scope="session")
def gptq_checkpoints(tiny, tmp_path_factory) -> Path:
    """Every ``quant_checkpoints.VARIANTS`` checkpoint of the tiny Llama quantized by GPTQModel (in a subprocess,
    once per session), each with its ``<variant>-dense`` reference: the library's own dequantization."""
    from quant_checkpoints import NO_GPTQMODEL, VARIANTS

    out = tmp_path_factory.mktemp("quant")
    # gptqmodel imports setuptools, whose distutils shim asserts when another module already imported the
    # standard library's distutils; the shim is not needed here. gptqmodel is imported in the script's process
    # only (once: importing it here as well, to see whether it imports, cost ~5 s per session).
    env = {"SETUPTOOLS_USE_DISTUTILS": "stdlib", **os.environ, "GPTQMODEL_CPU_WORKERS": "2",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    script = Path(__file__).parent / "quant_checkpoints.py"
    proc = subprocess.run([sys.executable, str(script), str(tiny.path("llama")), str(out), *VARIANTS],
                          env=env, cwd=out, capture_output=True, text=True, timeout=900)  # its logs/ there
    if proc.returncode == NO_GPTQMODEL:  # the --no-deps install lacks a dependency
        why = proc.stderr.strip().splitlines()[-1]
        pytest.skip(f"{why}; see README 'Tests' for its --no-deps install")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


_SERVERS_BEFORE = pytest.StashKey[int]()


def _started_servers() -> list:
    mod = sys.modules.get("server_utils")
    return list(getattr(mod, "STARTED", []))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_SERVERS_BEFORE] = len(_started_servers())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the log of every ``pagoda serve`` it started or that still runs (a 503 from
    the server says nothing of why; its log does)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    servers = _started_servers()
    before = item.stash.get(_SERVERS_BEFORE, len(servers))
    for i, srv in enumerate(servers):
        if i >= before or srv.proc.poll() is None:
            try:
                text = srv.log()
            except OSError as e:
                text = f"(unreadable: {e})"
            report.sections.append((f"pagoda serve log, port {srv.port} (last 5,000 characters)", text))
