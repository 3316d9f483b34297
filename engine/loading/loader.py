"""One entry point for model files: a .gguf file or a Hugging Face folder -> `Checkpoint`."""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import ModelError
from ..model import ModelConfig
from ..tokenizer import Tokenizer
from . import header_cache
from .registry import check_model_path

_EDGE = 1 << 20  # bytes read from each end of a weights file for its fingerprint
# The files of a Hugging Face folder that loading reads (besides *.safetensors).
_HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


@dataclass
class Checkpoint:
    cfg: ModelConfig
    weights: Mapping[str, torch.Tensor]   # fp32, canonical Hugging Face names (see `open_weights`)
    tokenizer: Tokenizer
    fingerprint: str                   # stable id of the weight file(s), for cache keys
    info: dict[str, Any] = field(default_factory=dict)
    # When the header came from the cache, the weights are not opened until a model is built from them.
    open_weights: Callable[[], Mapping[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.open_weights is not None:
            self.weights = _Deferred(self.open_weights)


class _Deferred(Mapping):
    """A checkpoint's weights opened on first use (a cached header left the GGUF file unread)."""

    def __init__(self, open_weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        self._open, self._real = open_weights, None

    def real(self) -> Mapping[str, torch.Tensor]:
        if self._real is None:
            self._real = self._open()
        return self._real

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.real()[name]

    def __iter__(self):
        return iter(self.real())

    def __len__(self) -> int:
        return len(self.real())

    def __contains__(self, name: object) -> bool:
        return name in self.real()

    def __getattr__(self, name: str):   # pop, pop_converted, progress, close: the real mapping's
        if name == "close" and self._real is None:
            return lambda: None   # never opened: nothing to close
        return getattr(self.real(), name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("_open", "_real"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.real(), name, value)


def fingerprint(files: list[Path]) -> str:
    """A cheap, stable id of weight files: name, size and the first and last MiB of each.

    Enough to tell two models (or two quantizations) apart without hashing gigabytes;
    a KV-cache keyed by it is never reused across different weights.
    """
    digest = hashlib.sha256()
    for path in sorted(files):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read(_EDGE))
            if size > _EDGE:
                f.seek(max(_EDGE, size - _EDGE))
                digest.update(f.read(_EDGE))
    return digest.hexdigest()[:32]


def load_checkpoint(path: str | Path, cache_dir: Path | None = None, gguf_fingerprint: str | None = None) -> Checkpoint:
    """Load a .gguf file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).

    With `cache_dir`, a GGUF's header (config, tokenizer) is read from `header_cache` once it has been
    parsed, and its built tokenizer is kept there too."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model path {path} does not exist",
                         "pass a .gguf file, a Hugging Face model folder or a model name "
                         "(run `keystroke models` to list them)")
    check_model_path(path)  # a FIFO or a device would block the reads below forever
    if path.is_dir():
        try:
            empty = not any(path.iterdir())
        except OSError as exc:
            raise ModelError(f"cannot list model folder {path}: {exc.strerror}",
                             "check the folder's permissions") from None
        if empty:
            raise ModelError(f"model folder {path} is empty",
                             "a model folder needs config.json, *.safetensors and tokenizer.json")
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            path = ggufs[0]  # a folder holding just one GGUF file means that file
            check_model_path(path)
        else:
            from .hf import load_hf_folder

            for file in [path / name for name in _HF_FILES] + sorted(path.glob("*.safetensors")):
                if file.exists():
                    check_model_path(file)
            cfg, weights, tokenizer, info = load_hf_folder(path)
            files = sorted(path.glob("*.safetensors")) + [path / "config.json"]
            return _checkpoint(cfg, weights, tokenizer, fingerprint(files), info)
    if path.suffix.lower() != ".gguf":
        magic = _read_magic(path)
        if magic != b"GGUF":
            raise ModelError(f"{path} is neither a .gguf file nor a model folder",
                             "pass a .gguf file or a folder with config.json, *.safetensors "
                             "and tokenizer.json")
    fp = gguf_fingerprint or fingerprint([path])   # a caller that already computed it (Engine.load) passes it
    if cache_dir is not None:
        hit = header_cache.load(cache_dir, fp, path)
        if hit is not None:
            cfg, info, tokenizer = hit
            return _checkpoint(cfg, {}, tokenizer, fp, info, open_weights=lambda: _gguf_weights(path, cfg))
    from .gguf import load_gguf

    tok_dir = header_cache.tokenizer_dir(cache_dir) if cache_dir is not None else None
    cfg, weights, tokenizer, info = load_gguf(path, tokenizer_dir=tok_dir)
    if cache_dir is not None:
        header_cache.save(cache_dir, fp, path, info["header_len"], cfg, info, tokenizer)
    return _checkpoint(cfg, weights, tokenizer, fp, info)


def _gguf_weights(path: Path, cfg: ModelConfig) -> Mapping[str, torch.Tensor]:
    """The tensors of a GGUF whose header came from the cache (the header is parsed now, the tokenizer not)."""
    from .gguf import open_weights

    return open_weights(path, cfg)


def release_freed_memory() -> None:
    """Hand memory freed while loading back to the system (glibc keeps it otherwise).

    Building Gemma 3's tokenizer from JSON frees ~300 MB that glibc's malloc keeps
    in the process (measured: RSS 420 -> 122 MB after `malloc_trim`); converting
    weights frees float32 blocks the same way. Elsewhere this does nothing.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read_magic(path: Path) -> bytes:
    """The first 4 bytes of a file, opened so that it cannot block (the path may have changed kind since
    `check_model_path`: O_NONBLOCK makes opening a FIFO return at once, and fstat then refuses it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ModelError(f"cannot open model file {path}: {exc.strerror}",
                         "check the path and its permissions") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelError(f"model path {path} is not a regular file",
                             "pass a .gguf file, a Hugging Face model folder or a model name")
        return os.read(fd, 4)
    finally:
        os.close(fd)


def _checkpoint(cfg: ModelConfig, weights: Mapping[str, torch.Tensor], tokenizer: Tokenizer,
                fp: str, info: dict[str, Any], open_weights=None) -> Checkpoint:
    # Embedding tables are often padded past the tokenizer (Qwen2.5: 151,936 rows for 151,665
    # tokens). The tokenizer then covers every logit: the extra ids decode to ''.
    if cfg.vocab_size > tokenizer.vocab_size:
        tokenizer.vocab_size = cfg.vocab_size
    elif cfg.vocab_size < tokenizer.vocab_size:
        raise ModelError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{cfg.vocab_size} embeddings", "the tokenizer does not belong to these weights")
    return Checkpoint(cfg, weights, tokenizer, fp, info, open_weights)
