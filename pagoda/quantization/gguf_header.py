"""A GGUF file's metadata and tensor table, read in one pass over the header; tensor data memory-mapped.

Why by hand: ``gguf.GGUFReader`` builds a numpy view per field part, so the default model's tokenizer
(49,152 tokens and as many merges, ~250,000 parts) took 1.9 s of the 2.3 s the engine core spends loading the
model on the 2-core dev VM (RESULTS.md, session 8); the core needs none of those strings. Here arrays are
skipped (string arrays by their lengths alone) unless their key is asked for, scalars and strings are decoded,
and each tensor's bytes are a slice of one ``numpy.memmap``.

Format (GGUF v2/v3, little-endian): magic ``GGUF``, version u32, tensor count u64, metadata count u64; each
metadata entry a string key, a u32 value type and the value (an array: item type u32, count u64, items); each
tensor a string name, u32 dims, u64 sizes (innermost first), u32 ggml type, u64 offset from the data start,
which is the end of the header rounded up to ``general.alignment`` (default 32). A truncated or corrupt header
is a ``ValueError`` naming the file (and the tensor, for a type id gguf does not know, more than 4 dimensions or
none with elements, rows that are not whole blocks of their type, data past the end of the file, or an offset other
than where the previous tensor's data ends, padded to the alignment, as llama.cpp requires); a
big-endian file is refused by name (its dense tensors would need swapping).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: ``dims`` innermost first (GGUF's order), ``type_id`` the ggml type, ``offset`` and ``nbytes``
    within the file."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        from gguf import GGMLQuantizationType

        try:
            return GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"ggml type {self.type_id}"


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars and strings; arrays only if asked for
    array_lengths: dict[str, int] = field(default_factory=dict)  # every array's item count
    tensors: list[TensorInfo] = field(default_factory=list)
    file: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))  # the memory-mapped file

    def data(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes (uint8, a view of the memory-mapped file)."""
        return self.file[t.offset:t.offset + t.nbytes]


class _Cursor:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"GGUF file {self.path} ends inside its header (truncated or corrupt?)")
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"GGUF file {self.path} ends inside its header (truncated or corrupt?)")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        for _ in range(count):
            if pos + 8 > end:
                raise ValueError(f"GGUF file {self.path} ends inside its header (truncated or corrupt?)")
            pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
        if pos > end:
            raise ValueError(f"GGUF file {self.path} ends inside its header (truncated or corrupt?)")
        self.pos = pos

    def value(self, vtype: int, keep: bool) -> tuple[Any, int | None]:
        """(value, array length or None); an array's items are decoded only when ``keep``."""
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype]), None
        if vtype == _STRING:
            return self.string(), None
        if vtype != _ARRAY:
            raise ValueError(f"GGUF file {self.path}: unknown metadata value type {vtype} (corrupt?)")
        itype, count = self.take("I"), self.take("Q")
        if keep:
            return [self.value(itype, True)[0] for _ in range(count)], count
        if itype == _STRING:
            self.skip_strings(count)
        elif itype in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[itype]) * count
        else:  # arrays of arrays: walk them
            for _ in range(count):
                self.value(itype, False)
        if self.pos > len(self.buf):
            raise ValueError(f"GGUF file {self.path} ends inside its header (truncated or corrupt?)")
        return None, count


def read_gguf_header(path: Path, keep_arrays: Iterable[str] = ()) -> GGUFHeader:
    """Metadata and tensor table of ``path`` (module docstring); ``keep_arrays``: array keys to decode."""
    path = Path(path)
    keep = set(keep_arrays)
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"GGUF file {path} cannot be read: {exc}") from exc
    cur = _Cursor(mm.data, path)
    if bytes(cur.buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (no GGUF magic at its start)")
    cur.pos = 4
    version = cur.take("I")
    if version & 0xFFFF == 0:
        raise ValueError(f"GGUF file {path} is big-endian, which pagoda does not read; convert it little-endian")
    if version not in (2, 3):
        raise ValueError(f"GGUF file {path} has format version {version}; pagoda reads versions 2 and 3")
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    head = GGUFHeader(path, version, file=mm)
    for _ in range(n_kv):
        key = cur.string()
        value, length = cur.value(cur.take("I"), key in keep)
        if length is not None:
            head.array_lengths[key] = length
        if value is not None:
            head.metadata[key] = value
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.take("Q") for _ in range(cur.take("I")))
        infos.append((name, dims, cur.take("I"), cur.take("Q")))
    align = head.metadata.get("general.alignment", 32)
    if type(align) is not int or align < 1:
        raise ValueError(f"GGUF file {path}: general.alignment is {align!r}, not a positive integer (corrupt?)")
    start = (cur.pos + align - 1) // align * align
    head.tensors = [_tensor_info(path, info, start, align, len(mm)) for info in infos]
    # llama.cpp (gguf_init_from_file) requires each tensor's data right after the previous one's, padded to the
    # alignment, in table order; a type or shape changed by corruption moves every later offset, so the file is
    # refused there rather than read as other bytes (a smaller type would otherwise leave a gap and load garbage).
    expected = start
    for t in head.tensors:
        if t.offset != expected:
            raise ValueError(f"GGUF file {path}: tensor {t.name!r} has data offset {t.offset - start}, expected "
                             f"{expected - start} (where the previous tensors' data ends): a tensor's type or shape "
                             f"in the header is corrupt")
        expected += (t.nbytes + align - 1) // align * align
    return head


def _tensor_info(path: Path, info: tuple[str, tuple[int, ...], int, int], start: int, align: int,
                 file_size: int) -> TensorInfo:
    """One entry of the tensor table, its data at ``start + offset``; ``ValueError`` naming the tensor for a type
    id gguf does not know, rows that are not whole blocks, data past the end or off the alignment."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    name, dims, type_id, offset = info
    if len(dims) > _MAX_DIMS:
        raise ValueError(f"GGUF file {path}: tensor {name!r} has {len(dims)} dimensions; GGUF tensors have at most "
                         f"{_MAX_DIMS} (corrupt file?)")
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:  # gguf's reader (and transformers' conversion) would fail on it without naming it
        raise ValueError(f"GGUF file {path}: tensor {name!r} has ggml type id {type_id}, which is not a GGUF "
                         f"type (corrupt file, or a type newer than the installed gguf package)") from None
    try:
        block, type_size = GGML_QUANT_SIZES[qtype]
    except KeyError:
        block, type_size = 1, 0  # a type without a size: iter_gguf_tensors names it
    if dims and dims[0] % block:
        raise ValueError(f"GGUF file {path}: tensor {name!r} has rows of {dims[0]} values, not whole "
                         f"{qtype.name} blocks of {block} (corrupt file?)")
    n = math.prod(dims)  # exact: a corrupt size near 2**64 must not wrap around
    nbytes = n // block * type_size
    if n == 0:
        raise ValueError(f"GGUF file {path}: tensor {name!r} has shape {list(dims)}, with no elements (corrupt file?)")
    if start + offset + nbytes > file_size:
        raise ValueError(f"GGUF file {path}: tensor {name!r} lies past the end of the file (truncated or corrupt?)")
    if offset % align:
        raise ValueError(f"GGUF file {path}: tensor {name!r} starts at data offset {offset}, not a multiple of "
                         f"general.alignment {align} (corrupt file?)")
    return TensorInfo(name, dims, type_id, start + offset, nbytes)
