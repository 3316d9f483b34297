"""The run-format weights of a model, cached on disk after the first load, memory-mapped on later ones.

Converting a GGUF file (dequantize every tensor, requantize it to int8) takes
seconds; mapping the result back takes milliseconds. After the first load the
model's tensors (int8 weights, their scales, the norms) are written to
`<cache>/packed/<key>.safetensors`, tied tensors once. The key hashes what
the bytes depend on: the checkpoint's fingerprint (loader.fingerprint), the
weight format, this file's format version and the torch version.

A cache file is trusted only if its header parses, it names the same key and
model shape, and the checksum of its data (every tensor's bytes, in file
order) matches the one recorded at writing; otherwise it is deleted and
rebuilt. The check runs at every load, so `Engine.load` starts it first
(`FileCheck`): a `cksum` child process reads the file while this process
builds the tokenizer. Writing goes to a temporary file that is renamed into
place, so a crash leaves no half-written file under the real name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import mmap
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import torch
from safetensors import safe_open

from ..model import ModelConfig, Transformer, rope_inv_freq
from ..quantize import Int8Embedding, Int8Linear, Packer

log = logging.getLogger("keystroke.engine")

FORMAT_VERSION = 2   # 2: one checksum over the data, not a CRC per tensor


def cache_key(fingerprint: str, quant: str) -> str:
    text = f"{fingerprint}\0{quant}\0{torch.__version__}\0packed-v{FORMAT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_path(root: Path, fingerprint: str, quant: str) -> Path:
    return Path(root) / "packed" / f"{cache_key(fingerprint, quant)}.safetensors"


def _cksum() -> str | None:
    return shutil.which("cksum")


def data_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """The checksum of the tensors' bytes in this order, as `FileCheck` reads it back from the data section:
    POSIX `cksum`'s "CRC LENGTH" where the command exists (coreutils computes it with carry-less
    multiplication: 0.16 s for 630 MB against zlib's 0.40), else zlib's CRC-32."""
    chunks = [memoryview(t.contiguous().view(torch.uint8).numpy()) for t in tensors.values() if t.numel()]
    exe = _cksum()
    if exe is not None:
        try:
            proc = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for chunk in chunks:
                proc.stdin.write(chunk)
            out, _ = proc.communicate()
            if proc.returncode == 0:
                return "cksum " + b" ".join(out.split()[:2]).decode()
        except OSError:
            pass
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return f"crc32 {crc}"


class FileCheck:
    """The checksum of a packed file's data section (after its header), started before the work it runs beside.

    `cksum` runs as a child process reading the file itself: it needs neither
    this process's GIL (which the tokenizer's build holds) nor its memory (a
    second mapping of the weights would add their size to the peak RSS).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._proc: subprocess.Popen | None = None
        self._offset = None
        exe = _cksum()
        try:
            with open(self.path, "rb", buffering=0) as f:   # unbuffered: the seek moves the descriptor itself
                self._offset = 8 + int.from_bytes(f.read(8), "little")
                if exe is not None:
                    f.seek(self._offset)    # the child reads from here to the end
                    self._proc = subprocess.Popen([exe], stdin=f, stdout=subprocess.PIPE,
                                                  stderr=subprocess.DEVNULL)
        except (OSError, ValueError, OverflowError):   # no file, or a header length past any offset
            self._offset = None

    def result(self, kind: str) -> str | None:
        """The data's checksum of `kind` ("cksum" or "crc32"); None if it cannot be computed."""
        if self._proc is not None:
            out, _ = self._proc.communicate()
            ok = self._proc.returncode == 0
            self._proc = None
            if kind == "cksum":
                return "cksum " + b" ".join(out.split()[:2]).decode() if ok else None
        if kind != "crc32" or self._offset is None:
            return None
        try:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if self._offset > len(m):
                    return None
                with memoryview(m) as whole, whole[self._offset:] as data:
                    return f"crc32 {zlib.crc32(data)}"
        except (OSError, ValueError):
            return None


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
            "aliases": json.dumps(aliases), "checksum": data_checksum(unique)}
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

    `check`: the file's checksum, already under way (else it is computed here)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key or meta.get("config") != _config_json(cfg):
                raise ValueError("it belongs to other weights")
            recorded = meta.get("checksum")
            if not recorded:
                raise ValueError("it records no checksum")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if check is None or check.path != Path(path):
            check = FileCheck(path)
        if check.result(recorded.split(" ", 1)[0]) != recorded:
            raise ValueError("its data is damaged (the checksum differs)")
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
