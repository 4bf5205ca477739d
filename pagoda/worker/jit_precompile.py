"""Triton kernel variants compiled side by side at start-up, before the CUDA-graph captures launch them.

Why: with a cold Triton cache the start-up forwards (the memory-profile run, then the graph captures) compiled
every kernel variant they met one after the other, each at its first launch: ~17 s on the H200 for the Llama-3-8B
shape, 2.5-3 s per attention variant (RESULTS.md, sessions 6-8). Triton's compiler spends most of a compile in
MLIR/LLVM passes and ``ptxas``, which release the GIL, so threads compile several variants at once.

How, on a CUDA engine of one rank:

1. **dry pass**: the profile run and a first round of graph captures run with Triton's ``jit_cache_hook``
   answering "skip" on this thread: no Triton kernel launches, and each variant met is recorded as Triton's own
   serialisation of it (``specialization_data``: signature, constexprs, attributes, options, key) and starts
   compiling into Triton's disk cache on a thread pool at once, while the dry pass goes on. A stand-in in the
   kernel's in-memory cache makes the variant's next dry launches cheap no-ops. The dry captures' graphs are
   dropped; the profile run only measures torch's allocations, which the skipped launches do not change.
2. **preload**: once those compiles are done, every variant goes through ``JITFunction.preload`` on the pool,
   which loads it from the disk cache into the kernel's in-memory cache under the key its launch computes, and
   builds its launcher.
3. the real captures then find every variant compiled.

A **manifest** of the variants (``PAGODA_CACHE/jit_variants/<key>.json``; the key covers the engine config,
the card, the library versions and pagoda's own files) lets the next start with the same config skip the dry
pass: its variants are preloaded in the background from the start, while the weights load. The manifest also
keeps the activation peak the memory-profile run measured, so that start skips that run too (the peak is a
function of the config and the code, both in the key).

Invariants: only *when* a kernel compiles moves, never *what* runs: a launch still finds its kernel by Triton's
own key, and preload compiles the kernel's current source (a stale manifest entry costs a wasted compile, never a
wrong kernel). Anything that fails here (a variant that does not preload, an unreadable manifest) is logged at
debug level and the launch compiles as it did before. The stand-ins never outlive the dry pass. Its results are
garbage, so it only runs forwards that never read results on the host (the profile run, graph captures) and in
which no torch op indexes with integers a Triton kernel wrote (MoE routing and alignment are Triton end to end;
a torch gather on a skipped kernel's ids would read out of bounds). Measured (H200, 8B shape, RESULTS.md session
9): cold start-up 27.3 -> 15.3 s; 12.4 s with the manifest and an empty Triton cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pagoda import envs

logger = logging.getLogger("pagoda")

MANIFEST_DIR = "jit_variants"
_MANIFEST_VERSION = 1
_dry = threading.local()  # .on: this thread is in a dry pass


def in_dry_pass() -> bool:
    """This thread runs a dry pass: Triton launches are skipped, so a graph capture only runs its body once
    (pagoda/worker/graph_capture.py)."""
    return bool(getattr(_dry, "on", False))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compiled form of one ``@triton.jit`` function: where the function lives and Triton's JSON of the
    specialisation (``specialization_data``, which ``JITFunction.preload`` takes)."""

    module: str
    qualname: str
    spec: str


def supported() -> bool:
    """Triton with compile hooks and ``preload``, kernels not under the interpreter, the switch on."""
    if not envs.jit_precompile_enabled() or envs.triton_interpreter():
        return False
    try:
        from triton import knobs
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    rt = getattr(knobs, "runtime", None)
    return rt is not None and hasattr(rt, "jit_cache_hook") and hasattr(JITFunction, "preload")


KEY_EXTRAS: list[str] = []
"""More text for the manifest key: what a process changed beyond the config (``benchmarks/gpu/with_module_values.py``
puts its ``MODULE.NAME=VALUE`` switches here, so an A/B run neither uses nor overwrites the other side's manifest)."""


def config_key(cfg: Any, device_name: str) -> str:
    """The manifest key: every field of the engine config, the card, the library versions, the switches of
    which graphs are captured and whether kernels launch with PDL. Over-keying only costs a dry pass; a key that
    missed a change costs wasted compiles and variants compiled at their first launch."""
    import torch
    import triton

    import pagoda
    from pagoda.layers import pdl

    fields = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else vars(cfg)
    # what is captured, and how every Triton kernel is launched (PDL is a compile option: another variant each)
    switches = [envs.chunk_graphs_enabled(), envs.mixed_graphs_enabled(), envs.batch_invariant(),
                pdl.ENABLED and envs.pdl_enabled()]
    blob = json.dumps([_MANIFEST_VERSION, pagoda.__version__, source_fingerprint(), torch.__version__,
                       triton.__version__, device_name, fields, switches, KEY_EXTRAS], default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def source_fingerprint() -> str:
    """Size and modification time of every module of pagoda: an edited checkout is a new config (the activation
    peak the record keeps is only as good as the code that measured it)."""
    import pagoda

    root = Path(pagoda.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def manifest_path(key: str) -> Path:
    return Path(envs.cache_root()).expanduser() / MANIFEST_DIR / f"{key}.json"


def read_manifest(path: Path) -> tuple[list[Variant], int | None]:
    """The variants a manifest lists and the activation peak it records; empty and None when it is missing or
    unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        variants = [Variant(str(m), str(q), str(s)) for m, q, s in data["variants"]]
        peak = data.get("activation_peak")
        return variants, peak if isinstance(peak, int) and not isinstance(peak, bool) and peak >= 0 else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], None


def write_manifest(path: Path, variants: list[Variant], activation_peak: int | None = None) -> None:
    """Replace the manifest atomically; a failure is logged, never raised (the cache is an optimisation)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": _MANIFEST_VERSION, "activation_peak": activation_peak,
                       "variants": [[v.module, v.qualname, v.spec] for v in variants]}, f)
        os.replace(tmp, path)
    except OSError as e:
        logger.debug("could not write the Triton variant manifest %s: %s", path, e)


def find_kernel(module: str, qualname: str) -> Any:
    """The ``JITFunction`` named by a variant (imports its module); None when it is gone."""
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return _unwrap_kernel(obj)


def _unwrap_kernel(obj: Any) -> Any:
    """The ``JITFunction`` ``obj`` is or wraps (``@triton.autotune`` / ``@triton.heuristics`` keep it in ``.fn``);
    None for anything else, including an object whose attribute lookup raises."""
    try:
        for _ in range(8):
            if hasattr(obj, "preload"):
                return obj
            if not hasattr(obj, "fn"):
                return None
            obj = obj.fn
    except Exception:
        return None
    return None


def preload(kernel: Any, spec: str) -> bool:
    """Compile (or load from Triton's disk cache) one variant into ``kernel``'s in-memory cache and build its
    launcher; False when Triton refused it."""
    compiled = kernel.preload(spec)
    if compiled is None:
        return False
    init = getattr(compiled, "_init_handles", None)  # loads the module and builds the launcher (gcc, cold cache)
    if init is not None:
        init()
    return True


def compile_to_disk(kernel: Any, device: int, compile_kw: dict[str, Any]) -> None:
    """Compile one variant into Triton's disk cache only, from what Triton's hook was handed (the kernel's
    in-memory cache is left alone: a dry pass may be running). The same source, target and options as
    ``preload`` derives from the variant's ``specialization_data``, so a later preload is a disk-cache hit."""
    _, _, target, backend, _ = kernel.device_caches[device]
    options = json.loads(compile_kw["specialization_data"])["options"]
    options = backend.parse_options({k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    src = kernel.ASTSource(kernel, compile_kw["signature"], compile_kw["constants"], compile_kw["configs"][0])
    kernel.compile(src, target=target, options=options.__dict__)


class _Skipped:
    """Put in a kernel's in-memory cache during a dry pass, under the key of a variant already recorded: Triton
    then finds it without calling the hook again (which serialises the specialisation at every launch) and its
    "launch" does nothing. Removed when the dry pass ends."""

    function = None
    packed_metadata = None

    def launch_metadata(self, *args: Any) -> None:
        return None

    def run(self, *args: Any) -> None:
        return None


_SKIPPED = _Skipped()


def _kernel_caches() -> list[dict[Any, Any]]:
    """The in-memory kernel caches (one per device) of every ``@triton.jit`` function in pagoda's loaded modules
    (unwrapping autotuners and heuristics)."""
    import sys

    from triton.runtime.jit import JITFunction

    out: dict[int, dict[Any, Any]] = {}
    for name, module in list(sys.modules.items()):
        if not (name == "pagoda" or name.startswith("pagoda.")) or module is None:
            continue
        for obj in list(vars(module).values()):
            kernel = _unwrap_kernel(obj)
            if isinstance(kernel, JITFunction):
                for entry in getattr(kernel, "device_caches", {}).values():
                    out[id(entry[0])] = entry[0]
    return list(out.values())


class JitPrecompiler:
    """One engine's start-up compiles: dry-pass recording, the thread pool, the manifest (module docstring)."""

    def __init__(self, key: str, device_index: int, workers: int) -> None:
        self.path = manifest_path(key)
        self.device_index = device_index
        self.workers = max(1, workers)
        self.manifest, self.activation_peak = read_manifest(self.path)
        self._recorded_peak = self.activation_peak
        self.recorded: dict[str, tuple[Variant, Any]] = {}  # spec -> (variant, its JITFunction)
        self._preloads: set[str] = set()
        self._futures: list[Future[bool]] = []  # preloads
        self._disk: list[Future[None]] = []  # dry-pass compiles into Triton's disk cache
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_engine(cls, cfg: Any, device: Any) -> JitPrecompiler | None:
        """A precompiler for a one-rank CUDA engine whose kernels Triton compiles; None otherwise (CPU, the
        interpreter, tensor or pipeline parallelism, ``PAGODA_JIT_PRECOMPILE=0``, a Triton without hooks)."""
        if device.type != "cuda" or cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1 or not supported():
            return None
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        workers = min(32, os.cpu_count() or 1)
        try:
            key = config_key(cfg, torch.cuda.get_device_name(index))
        except Exception as e:  # a config field that does not serialise: compile at first launch, as before
            logger.debug("no Triton precompile: the engine config has no manifest key (%s)", e)
            return None
        return cls(key, index, workers)

    @property
    def needs_dry_pass(self) -> bool:
        """No manifest for this config yet: the captures must be walked once without kernels to find variants."""
        return not self.manifest

    # ------------------------------------------------------------------ compiling
    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pagoda-jit",
                                            initializer=self._bind_device)
        return self._pool

    def _bind_device(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(self.device_index)  # a new thread's CUDA device is 0 otherwise

    def _submit_preload(self, variant: Variant, kernel: Any | None) -> None:
        if variant.spec in self._preloads:
            return
        self._preloads.add(variant.spec)
        self._futures.append(self._ensure_pool().submit(self._load, variant, kernel))

    @staticmethod
    def _load(variant: Variant, kernel: Any | None) -> bool:
        try:
            kernel = kernel if kernel is not None else find_kernel(variant.module, variant.qualname)
            return kernel is not None and preload(kernel, variant.spec)
        except Exception as e:  # the launch will compile it as before
            logger.debug("Triton variant of %s.%s did not preload: %s", variant.module, variant.qualname, e)
            return False

    @staticmethod
    def _to_disk(variant: Variant, kernel: Any, device: int, compile_kw: dict[str, Any]) -> None:
        try:
            compile_to_disk(kernel, device, compile_kw)
        except Exception as e:  # the preload (or the launch) compiles it instead
            logger.debug("Triton variant of %s.%s did not compile ahead: %s", variant.module, variant.qualname, e)

    def start_manifest_preload(self) -> None:
        """Begin preloading the manifest's variants in the background (from the start, while weights load)."""
        for v in self.manifest:
            self._submit_preload(v, None)

    def compile_all(self) -> tuple[int, int, float]:
        """Wait for the dry passes' compiles, then preload every variant recorded or listed (disk-cache hits by
        now, side by side) and wait for them: (preloaded, failed, seconds waited)."""
        t0 = time.perf_counter()
        for f in self._disk:
            f.result()
        self._disk = []
        for v, kernel in list(self.recorded.values()):
            self._submit_preload(v, kernel)
        ok = sum(1 for f in self._futures if f.result())
        failed = len(self._futures) - ok
        self._futures = []
        return ok, failed, time.perf_counter() - t0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ dry pass
    @contextlib.contextmanager
    def dry_pass(self) -> Iterator[None]:
        """On this thread, Triton launches are skipped and their variants recorded, each new one starting to
        compile into Triton's disk cache at once (other threads, e.g. the pool's preloads, go through untouched).
        Restores Triton's previous hook, and takes the :class:`_Skipped` stand-ins out, on exit.

        Variants this process compiled before (an earlier engine, a kernel called directly) are taken out of the
        kernels' in-memory caches for the pass and put back after: a cache hit would launch for real, on the
        garbage a skipped kernel left (e.g. MoE expert ids from a skipped routing kernel: an illegal address)."""
        from triton import knobs

        rt = knobs.runtime
        prev = rt.jit_cache_hook
        me = threading.get_ident()
        stand_ins: list[tuple[dict[Any, Any], Any]] = []

        def hook(**kw: Any) -> bool:
            if threading.get_ident() != me:
                return bool(prev(**kw)) if prev else False
            self._record(kw, stand_ins)
            return True  # skip: nothing compiles, nothing launches

        hidden = [(cache, dict(cache)) for cache in _kernel_caches() if cache]
        for cache, _ in hidden:
            cache.clear()
        rt.jit_cache_hook = hook
        _dry.on = True
        pagoda_log = logging.getLogger("pagoda")
        level = pagoda_log.level
        pagoda_log.setLevel(max(level, logging.WARNING))  # the dry captures' own "Captured ..." lines
        try:
            yield
        finally:
            rt.jit_cache_hook = prev
            _dry.on = False
            pagoda_log.setLevel(level)
            for cache, key in stand_ins:
                if cache.get(key) is _SKIPPED:  # a preload may have put the real kernel there meanwhile
                    del cache[key]
            for cache, saved in hidden:
                for key, kernel in saved.items():
                    cache.setdefault(key, kernel)

    def _record(self, kw: dict[str, Any], stand_ins: list[tuple[dict[Any, Any], Any]] | None = None) -> None:
        info = kw.get("fn")
        kernel = getattr(info, "jit_function", None)
        compile_kw = kw.get("compile") or {}
        spec = compile_kw.get("specialization_data")
        if kernel is None or not isinstance(spec, str):
            return
        if stand_ins is not None:
            caches = getattr(kernel, "device_caches", None)
            device = compile_kw.get("device")
            if caches is not None and device in caches and kw.get("key") is not None:
                cache = caches[device][0]
                cache.setdefault(kw["key"], _SKIPPED)
                stand_ins.append((cache, kw["key"]))
        if spec in self.recorded:
            return
        fn = getattr(kernel, "fn", None)
        module = getattr(fn, "__module__", None) or getattr(kernel, "module", "")
        qualname = getattr(fn, "__qualname__", None) or getattr(info, "name", "")
        variant = Variant(str(module), str(qualname), spec)
        self.recorded[spec] = (variant, kernel)
        if stand_ins is not None and spec not in self._preloads and compile_kw.get("device") is not None:
            self._disk.append(self._ensure_pool().submit(self._to_disk, variant, kernel, compile_kw["device"],
                                                         compile_kw))

    # ------------------------------------------------------------------ manifest
    def save_manifest(self) -> None:
        """Write the manifest when this start found variants it did not list, or measured the activation peak."""
        known = {v.spec for v in self.manifest}
        new = [v for v, _ in self.recorded.values() if v.spec not in known]
        if new or self.activation_peak != self._recorded_peak:
            write_manifest(self.path, [*self.manifest, *new], self.activation_peak)
