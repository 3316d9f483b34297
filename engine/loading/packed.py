"""The run-format weights of a model, cached on disk after the first load, memory-mapped on later ones.

Converting a GGUF file (dequantize every tensor, requantize it to int8) takes
seconds; mapping the result back takes milliseconds. After the first load the
model's tensors (int8 weights, their scales, the norms) are written to
`<cache>/packed/<key>.safetensors`, tied tensors once. The key hashes what
the bytes depend on: the checkpoint's fingerprint (loader.fingerprint), the
weight format, this file's format version and the torch version.

A cache file is trusted only if its header parses, it names the same key and
model shape, and the CRC-32 of its data (every tensor's bytes, in file order)
matches the one recorded at writing; otherwise it is deleted and rebuilt. The
CRC is checked at every load (0.4 s for Qwen 0.5B's 500 MB), so `Engine.load`
starts it first, in a thread: one `zlib.crc32` call over the mapped file,
which releases the GIL, runs beside the tokenizer's build, which holds it. Writing goes to a temporary file that is renamed into
place, so a crash leaves no half-written file under the real name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import mmap
import os
import threading
import zlib
from pathlib import Path

import torch
from safetensors import safe_open

from ..model import ModelConfig, Transformer, rope_inv_freq
from ..quantize import Int8Embedding, Int8Linear, Packer

log = logging.getLogger("keystroke.engine")

FORMAT_VERSION = 2   # 2: one CRC over the data, not one per tensor


def cache_key(fingerprint: str, quant: str) -> str:
    text = f"{fingerprint}\0{quant}\0{torch.__version__}\0packed-v{FORMAT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_path(root: Path, fingerprint: str, quant: str) -> Path:
    return Path(root) / "packed" / f"{cache_key(fingerprint, quant)}.safetensors"


def _data_crc(tensors: dict[str, torch.Tensor]) -> int:
    """The CRC-32 of the tensors' bytes in this order: what `file_crc` reads back from the data section."""
    crc = 0
    for t in tensors.values():
        if t.numel():
            crc = zlib.crc32(t.contiguous().view(torch.uint8).numpy(), crc)
    return crc


def file_crc(path: Path) -> int | None:
    """The CRC-32 of a safetensors file's data section (after its header); None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if 8 + header > len(m):
                    return None
                with memoryview(m) as whole, whole[8 + header:] as data:
                    return zlib.crc32(data)
    except (OSError, ValueError):
        return None


class FileCheck:
    """`file_crc(path)` computed in a thread, started before the work it should run beside."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._crc: int | None = None
        self._thread = threading.Thread(target=self._run, name="keystroke-packed-crc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._crc = file_crc(self.path) if self.path.is_file() else None

    def result(self) -> int | None:
        self._thread.join()
        return self._crc


def _config_json(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def save(model: Transformer, path: Path, key: str) -> None:
    """Write `model`'s tensors to `path` (atomically; a failure only costs the next start its conversion)."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict().items():
        first = seen.get(id(t))
        if first is None:
            for other, u in unique.items():    # the same storage under two names (a tied table)
                if u.data_ptr() == t.data_ptr() and u.shape == t.shape and u.dtype == t.dtype:
                    first = other
                    break
        if first is not None:
            aliases[name] = first
            continue
        seen[id(t)] = name
        unique[name] = t.contiguous()
    meta = {"key": key, "format": str(FORMAT_VERSION), "config": _config_json(model.cfg),
            "aliases": json.dumps(aliases), "crc32": str(_data_crc(unique))}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        _write_safetensors(partial, unique, meta)
        os.replace(partial, path)
    except OSError as exc:
        log.warning("could not cache the packed weights in %s: %s", path, exc)
    finally:
        partial.unlink(missing_ok=True)


_DTYPES = {torch.int8: "I8", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors layout, written tensor by tensor (safetensors' save_file first copies every
    tensor into a bytes object: the whole model twice in memory)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)   # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.contiguous().view(torch.uint8).numpy()))


def load(path: Path, key: str, cfg: ModelConfig, check: FileCheck | None = None) -> Transformer | None:
    """The int8 model stored at `path`, its tensors memory-mapped; None (and the file deleted) if unusable.

    `check`: the file's CRC, already under way (else it is computed here)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key or meta.get("config") != _config_json(cfg):
                raise ValueError("it belongs to other weights")
            recorded = int(meta["crc32"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        crc = check.result() if check is not None and check.path == Path(path) else file_crc(path)
        if crc != recorded:
            raise ValueError("its data is damaged (CRC-32 differs)")
        for name, first in json.loads(meta["aliases"]).items():
            tensors[name] = tensors[first]
        return _assemble(cfg, tensors)
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        log.warning("the packed weights in %s are unusable (%s); rebuilding them", path, exc)
        path.unlink(missing_ok=True)
        return None


def _assemble(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    Packer.shell(model)
    model.embed = Int8Embedding(model.output if cfg.tie_embeddings
                                else Int8Linear.empty(cfg.vocab_size, cfg.dim, False))
    model.load_state_dict(tensors, strict=True, assign=True)
    model._inv_freq = {t: rope_inv_freq(cfg, t) for t in model._inv_freq}
    model.requires_grad_(False)
    return model.share_phase()
