"""Load a GGUF file: metadata -> ModelConfig, tensors -> fp32 torch tensors with Hugging Face names.

The header is parsed here with the `gguf` package's type tables, because gguf-py's
`GGUFReader` builds a Python object per array element: for Gemma 3's 262k-token
vocabulary that costs ~8 s and ~700 MB before a single weight is read. The
header is memory-mapped only while it is parsed; tensors are then read with
`pread` when they are asked for (`GGUFTensors.pop`) and dequantized by
`gguf.quants.dequantize` a block of rows at a time, so neither the file's
pages nor more than one float32 tensor (or, with `pop_converted`, one block of
rows of the embedding table) are resident at once.

llama.cpp's converter permutes the rows of Q and K of Llama-architecture models
(its RoPE pairs adjacent dimensions, Hugging Face pairs the two halves); that
is undone here. Qwen2 and Gemma 3 files are not permuted. Gemma 3 files already
store norm weights as the effective multiplier (1 + w).
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from ..errors import ModelError
from ..model import ModelConfig
from ..tokenizer import Tokenizer

GGUF_MAGIC = b"GGUF"
SUPPORTED_TYPES = frozenset(GGMLQuantizationType[name] for name in (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"))
ARCHITECTURES = ("llama", "qwen2", "gemma3")

_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}

# GGUF tensor name pieces -> Hugging Face names (per block, then the rest).
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class TensorInfo:
    __slots__ = ("name", "shape", "qtype", "offset", "nbytes")

    def __init__(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType,
                 offset: int, nbytes: int) -> None:
        self.name, self.shape, self.qtype, self.offset, self.nbytes = name, shape, qtype, offset, nbytes


class GGUFFile:
    """The metadata and tensor table of a GGUF file, its data memory-mapped (close() when done)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise ModelError(f"cannot open model file {path}: {exc.strerror}",
                             "check the path, or run `keystroke models` to see what is available") from None
        try:
            size = path.stat().st_size
            if size < 24:
                raise ModelError(f"{path} is not a GGUF model file (only {size} bytes)",
                                 "pass a .gguf file or a Hugging Face model folder")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.metadata, self.tensors = self._parse(size)
        except BaseException:
            self.close()
            raise
        self._close_map()   # tensor data is read with pread: the header's pages leave this process

    def _close_map(self) -> None:
        if getattr(self, "_map", None) is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive (an exception's frame); the GC closes it
                pass
            self._map = None

    def close(self) -> None:
        self._close_map()
        self._file.close()

    # -- header ------------------------------------------------------------------------------

    def _parse(self, size: int) -> tuple[dict[str, Any], list[TensorInfo]]:
        buf, path = self._map, self.path
        if buf[:4] != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF model file (it does not start with 'GGUF')",
                             "pass a .gguf file or a Hugging Face model folder")
        version = struct.unpack_from("<I", buf, 4)[0]
        if version not in (2, 3):
            raise ModelError(f"{path} is GGUF version {version}, which is not supported",
                             "re-convert the model with a current llama.cpp (GGUF v3, little-endian)")
        self._pos = 8
        try:
            n_tensors, n_kv = self._read("<Q"), self._read("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = self._string()
                metadata[key] = self._value(GGUFValueType(self._read("<I")))
            infos = []
            for _ in range(n_tensors):
                name = self._string()
                dims = [self._read("<Q") for _ in range(self._read("<I"))]
                raw_type = self._read("<I")
                offset = self._read("<Q")
                infos.append((name, dims, raw_type, offset))
        except (struct.error, ValueError, UnicodeDecodeError, IndexError, MemoryError):
            raise ModelError(f"{path} is truncated or corrupt (its header cannot be read)",
                             "download or assemble the model file again") from None
        self.header_len = self._pos   # metadata and tensor table: what header_cache checks
        alignment = int(metadata.get("general.alignment", 32))
        data_start = -(-self._pos // alignment) * alignment
        tensors = []
        for name, dims, raw_type, offset in infos:
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise ModelError(f"tensor {name} of {path} has unknown type id {raw_type}",
                                 "re-convert the model with a current llama.cpp") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            count = math.prod(dims)
            nbytes = count // block * type_size
            start = data_start + offset
            if start + nbytes > size:
                raise ModelError(f"{path} is truncated: tensor {name} ends at byte {start + nbytes:,} "
                                 f"but the file has {size:,} bytes",
                                 "download or assemble the model file again")
            # GGUF lists dimensions innermost first; torch wants (out, in).
            tensors.append(TensorInfo(name, tuple(reversed(dims)), qtype, start, nbytes))
        return metadata, tensors

    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._map, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._read("<Q")
        if self._pos + n > len(self._map):
            raise ValueError("string past end of file")
        raw = self._map[self._pos:self._pos + n]
        self._pos += n
        return raw.decode("utf-8", errors="replace")

    def _value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            item_type, count = GGUFValueType(self._read("<I")), self._read("<Q")
            if item_type in _SCALARS:
                dtype = np.dtype(_SCALARS[item_type])
                end = self._pos + count * dtype.itemsize
                if end > len(self._map):
                    raise ValueError("array past end of file")
                array = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos).copy()
                self._pos = end
                return array
            return [self._value(item_type) for _ in range(count)]
        return self._read(_SCALARS[vtype])

    # -- tensors -----------------------------------------------------------------------------

    def _check_type(self, info: TensorInfo) -> None:
        if info.qtype not in SUPPORTED_TYPES:
            raise ModelError(f"tensor {info.name} of {self.path} uses quantization type {info.qtype.name}, "
                             "which is not supported",
                             "supported: " + ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
                             + "; re-quantize with llama-quantize (e.g. Q8_0 or Q4_K_M)")

    def row_blocks(self, info: TensorInfo, rows_per_block: int | None = None):
        """Yield (first row, fp32 block of rows) of a tensor viewed as (rows, last dim)."""
        self._check_type(info)
        rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
        row_bytes = info.nbytes // rows
        step = rows_per_block or max(1, (1 << 22) // max(1, info.shape[-1]))  # ~4M values per block
        fd = self._file.fileno()
        for start in range(0, rows, step):
            n = min(step, rows - start)
            raw = bytearray(n * row_bytes)   # writable, so torch can share the array below
            if os.preadv(fd, [raw], info.offset + start * row_bytes) != len(raw):
                raise ModelError(f"{self.path} is truncated: tensor {info.name} cannot be read",
                                 "download or assemble the model file again")
            block = np.frombuffer(raw, dtype=np.uint8).reshape(n, row_bytes)
            values = dequantize(block, info.qtype)
            if values.dtype != np.float32 or not values.flags.writeable:
                values = values.astype(np.float32)
            yield start, torch.from_numpy(np.ascontiguousarray(values))

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """One tensor as fp32, shape (out, in) for matrices."""
        rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
        out = torch.empty((rows, info.shape[-1]), dtype=torch.float32)
        for start, block in self.row_blocks(info):
            out[start:start + block.shape[0]] = block
        return out.reshape(info.shape)

    def converted(self, info: TensorInfo, convert) -> tuple[torch.Tensor, ...]:
        """`convert` (a row-wise function of an fp32 block returning row-first tensors) over the whole tensor,
        a block at a time: the fp32 tensor never exists whole."""
        rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
        outs: list[torch.Tensor] = []
        for start, block in self.row_blocks(info):
            parts = convert(block)
            if not outs:
                outs = [torch.empty((rows, *p.shape[1:]), dtype=p.dtype) for p in parts]
            for o, p in zip(outs, parts):
                o[start:start + p.shape[0]] = p
        return tuple(outs)


class GGUFTensors(Mapping):
    """A GGUF file's weights by Hugging Face name, read when asked for.

    A read-only mapping (each lookup reads the tensor again) plus `pop`, which
    hands a tensor over and forgets it; popping the last one, or `close()`,
    closes the file.
    """

    def __init__(self, gguf: GGUFFile, names: dict[str, TensorInfo], cfg: ModelConfig, arch: str) -> None:
        self._gguf, self._names, self._cfg, self._arch = gguf, names, cfg, arch
        self._total = len(names)
        self.progress = None   # called with (tensors read, tensors in all) after each one

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:   # without reading the tensor, unlike Mapping's
        return name in self._names

    def __iter__(self):
        return iter(list(self._names))

    def __getitem__(self, name: str) -> torch.Tensor:
        w = self._gguf.tensor(self._names[name])   # KeyError for a missing tensor, like a dict
        if self._arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _unpermute(w, self._cfg.n_heads if "q_proj" in name else self._cfg.n_kv_heads)
        return w

    def pop(self, name: str) -> torch.Tensor:
        w = self[name]
        del self._names[name]
        self._closed_when_done()
        return w

    def pop_converted(self, name: str, convert) -> tuple[torch.Tensor, ...]:
        """`convert` applied block by block of rows (for tables whose float32 copy would be large)."""
        if self._arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            return convert(self.pop(name))
        out = self._gguf.converted(self._names.pop(name), convert)
        self._closed_when_done()
        return out

    def _closed_when_done(self) -> None:
        if self.progress is not None:
            self.progress(self._total - len(self._names), self._total)
        if not self._names:
            self.close()

    def close(self) -> None:
        self._gguf.close()


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's interleaving of Q/K rows (per head: pairs -> halves)."""
    out_dim = w.shape[0]
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_name(name: str, arch: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4:
        piece = parts[2]
        if piece == "ffn_norm":
            # Gemma 3's pre-FFN norm; for Llama/Qwen2 it is the only norm after attention.
            hf = "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"
        else:
            hf = _BLOCK_NAMES.get(piece)
        return None if hf is None else f"model.layers.{parts[1]}.{hf}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    return None


def _config(meta: dict[str, Any], arch: str, tensors: dict[str, TensorInfo], path: Path) -> ModelConfig:
    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, np.ndarray):  # per-layer arrays (rare): one value is enough here
            value = value.flat[0] if value.size else default
        return value

    try:
        dim = int(get("embedding_length"))
        n_layers = int(get("block_count"))
        n_heads = int(get("attention.head_count"))
        hidden = int(get("feed_forward_length"))
    except TypeError:
        raise ModelError(f"{path} lacks the {arch}.* shape metadata (embedding_length, block_count, ...)",
                         "the file is incomplete; re-convert it with llama.cpp") from None
    n_kv = int(get("attention.head_count_kv", n_heads))
    head_dim = int(get("attention.key_length", dim // n_heads))
    embed = tensors["token_embd.weight"]
    cfg: dict[str, Any] = dict(
        family=arch, vocab_size=embed.shape[0], dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv, head_dim=head_dim, hidden_dim=hidden,
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_seq_len=int(get("context_length", 8192)),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
    )
    scaling = get("rope.scaling.type")
    if scaling == "linear" and float(get("rope.scaling.factor", 1.0)) != 1.0:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling not in (None, "none", "linear"):
        raise ModelError(f"{path} uses RoPE scaling {scaling!r}, which is not supported",
                         "use the model's Hugging Face folder instead")
    if "rope_freqs.weight" in tensors:
        raise ModelError(f"{path} carries RoPE frequency factors (Llama 3.1-style scaling), "
                         "which GGUF loading does not support",
                         "use the model's Hugging Face folder instead")
    if arch == "gemma3":
        window = get("attention.sliding_window")
        pattern = meta.get("gemma3.attention.sliding_window_pattern")
        if isinstance(pattern, np.ndarray) and pattern.size == n_layers:
            sliding = [bool(x) for x in pattern]
        else:
            # llama.cpp's Gemma 3 rule: every 6th layer is global (or every pattern-th, if given).
            every = int(pattern) if isinstance(pattern, (int, np.integer)) and pattern > 0 else 6
            sliding = [(i + 1) % every != 0 for i in range(n_layers)]
        # The 27B model scales queries by its model width per head, the others by head_dim.
        scale_dim = dim // n_heads if n_layers == 62 else head_dim
        cfg.update(
            qk_norm=True, sandwich_norm=True, embed_scale=math.sqrt(dim), activation="gelu_tanh",
            query_scale=scale_dim ** -0.5,
            sliding_window=int(window) if window else None,
            rope_local_theta=float(get("rope.freq_base_swa", 10000.0)),
            layer_types=["sliding" if s and window else "full" for s in sliding],
        )
    return ModelConfig(**cfg)


def _tensors(gguf: GGUFFile, cfg: ModelConfig, arch: str) -> GGUFTensors:
    names = {}
    for info in gguf.tensors:
        name = _hf_name(info.name, arch)
        if name is not None:
            names[name] = info
    return GGUFTensors(gguf, names, cfg, arch)


def open_weights(path: Path, cfg: ModelConfig) -> GGUFTensors:
    """The weights of a GGUF whose config is known (from header_cache): the header is parsed, no tokenizer built."""
    gguf = GGUFFile(Path(path))
    try:
        arch = gguf.metadata.get("general.architecture")
        if arch not in ARCHITECTURES or _config(gguf.metadata, arch, {t.name: t for t in gguf.tensors}, path) != cfg:
            raise ModelError(f"{path} changed while it was being loaded", "load the model again")
        return _tensors(gguf, cfg, arch)
    except BaseException:
        gguf.close()
        raise


def load_gguf(path: str | Path, tokenizer_dir: Path | None = None
              ) -> tuple[ModelConfig, "GGUFTensors", Tokenizer, dict[str, Any]]:
    """Read a GGUF file's header: (config, its weights read on demand, tokenizer, summary).

    The built tokenizer is cached in `tokenizer_dir` (default: the user cache's). The summary's
    `header_len` is where the header ends (header_cache checks those bytes)."""
    path = Path(path)
    gguf = GGUFFile(path)
    try:
        meta = gguf.metadata
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ModelError(f"{path} holds a {arch!r} model, an architecture keystroke cannot run",
                             "supported architectures: " + ", ".join(ARCHITECTURES))
        infos = {t.name: t for t in gguf.tensors}
        if "token_embd.weight" not in infos:
            raise ModelError(f"{path} has no token_embd.weight tensor", "the file is incomplete or corrupt")
        cfg = _config(meta, arch, infos, path)
        unsupported = sorted({t.qtype.name for t in gguf.tensors if t.qtype not in SUPPORTED_TYPES})
        if unsupported:
            raise ModelError(f"{path} uses quantization type(s) {', '.join(unsupported)}, "
                             "which keystroke cannot dequantize",
                             "supported: " + ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
                             + "; re-quantize with llama-quantize (e.g. Q8_0 or Q4_K_M)")
        tokenizer = Tokenizer.from_gguf_metadata({k: v for k, v in meta.items() if k.startswith("tokenizer.")},
                                                 cache_dir=tokenizer_dir)
        weights = _tensors(gguf, cfg, arch)
        summary = {
            "name": meta.get("general.name") or path.stem,
            "architecture": arch,
            "format": "gguf",
            "path": str(path),
            "file_size_mb": round(path.stat().st_size / 2**20, 1),
            "quant_types": dict(Counter(t.qtype.name for t in gguf.tensors)),
            "file_type": int(meta["general.file_type"]) if "general.file_type" in meta else None,
            "parameters": sum(math.prod(t.shape) for t in gguf.tensors),
            "context_length": cfg.max_seq_len,
            "header_len": gguf.header_len,
        }
    except BaseException:
        gguf.close()
        raise
    return cfg, weights, tokenizer, summary
