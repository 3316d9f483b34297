"""One KV-cache entry per document, reused by longest common token prefix, in memory and on disk.

The engine asks `acquire(doc_id, tokens)` before a forward pass and gets a
batch-1 `KVCache` whose first `reused` positions already hold the K/V of
`tokens[:reused]`; it prefills the rest and hands the cache back with
`release(doc_id, tokens_in_cache, cache)`. Between the two calls the cache
belongs to the caller alone: the store forgets it on `acquire`, so a forward
pass that fails half-way can never leave a cache whose contents disagree with
its token ids.

Where the prefix comes from, best first: the document's own entry (the same
object, rewound with `truncate`), any other document's entry (a copy: a file
opened twice, or a shared context header), or an entry on disk.

Disk layout (diskcache, no pickle anywhere; every key is namespaced by model
fingerprint, prompt-format version and layout version through the hash):

    "p:" + key  -> payload: K and V of every layer, raw bytes in `disk_dtype`
    "m:" + key  -> JSON: shape, dtype, token ids, sha256 of ids + payload
    "i:" + h_k  -> key, for h_k the hash of tokens[:k * block]  (prefix index)
    "d:" + h_id -> key, the last entry spilled for one document id

`key` is the hash of the entry's whole token list. Finding the longest prefix
on disk walks the prefix index from the longest block down; the entry found is
checked against its stored token ids (so a hash collision or a stale index
costs a miss, never a wrong cache) and against its checksum before use.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from .kvcache import KVCache
from .disk import is_corruption, open_disk_cache, recover_disk_cache

if TYPE_CHECKING:
    from ..model import ModelConfig

log = logging.getLogger("keystroke.kvstore")

LAYOUT_VERSION = 1  # bump when the on-disk layout below changes
Source = Literal["memory", "disk"]
_MB = 2 ** 20
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Lease:
    """A cache handed to the caller: `cache.length == reused` positions are valid."""

    doc_id: str
    cache: KVCache
    reused: int
    source: Source | None


@dataclass
class _Entry:
    tokens: np.ndarray  # int64, len == cache.length
    cache: KVCache


def common_prefix(a: np.ndarray, b: np.ndarray, limit: int | None = None) -> int:
    """Length of the longest common prefix of two token arrays (at most `limit`)."""
    n = min(len(a), len(b))
    if limit is not None:
        n = min(n, limit)
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def prefix_digests(namespace: bytes, tokens: np.ndarray, lengths: list[int]) -> dict[int, str]:
    """sha256 of namespace + tokens[:n] for every n in `lengths`, in one pass over the ids."""
    data = tokens.astype("<i4").tobytes()
    h = hashlib.sha256(namespace)
    out, pos = {}, 0
    for n in sorted(set(lengths)):
        h.update(data[pos * 4 : n * 4])
        pos = n
        out[n] = h.copy().hexdigest()
    return out


def _copy_prefix(src: KVCache, n: int, dst: KVCache) -> KVCache:
    """Copy the first `n` positions of `src` into `dst` (buffers grown as needed)."""
    dst.length = 0
    dst.ensure_capacity(n)
    for layer in range(src.n_layers):
        dst.k[layer][:, :, :n] = src.k[layer][:, :, :n]
        dst.v[layer][:, :, :n] = src.v[layer][:, :, :n]
    dst.length = n
    return dst


class KVStore:
    """Per-document KV-caches of one model under a memory budget, spilling to disk.

    Thread-safe: every public method holds one lock (disk I/O included, so a
    `close` waits for a running spill or load). The most recently released
    entry is kept in memory even when it alone exceeds the budget, so the
    document being typed in never reloads from disk.
    """

    def __init__(self, model_fingerprint: str, cfg: ModelConfig, *, memory_budget_mb: float = 1024,
                 disk_dir: Path | None = None, disk_budget_mb: float = 4096, format_version: int = 1,
                 kv_dtype_on_disk: torch.dtype = torch.float16, kv_dtype: torch.dtype = torch.float32,
                 block: int = 64, headroom: int = 128, device: torch.device | str = "cpu") -> None:
        if block < 1:
            raise ValueError("block must be at least 1 token")
        if kv_dtype_on_disk not in _DTYPES.values():
            raise ValueError(f"unsupported on-disk dtype {kv_dtype_on_disk}; use float16, bfloat16 or float32")
        self.fingerprint = model_fingerprint
        self.cfg = cfg
        self.format_version = format_version
        self.memory_budget = memory_budget_mb * _MB
        self.disk_budget = disk_budget_mb * _MB
        self.disk_dtype = kv_dtype_on_disk
        self.kv_dtype = kv_dtype
        self.device = torch.device(device)
        self.block = block
        self.headroom = headroom
        self._namespace = f"keystroke-kv\0{model_fingerprint}\0{format_version}\0{LAYOUT_VERSION}\0".encode()
        self._lock = threading.RLock()
        self._mem: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._leased: dict[str, int] = {}  # doc_id -> epoch at acquire
        self._closing: set[str] = set()    # closed while leased: spill on release
        self._epoch = 0                    # bumped by clear(): stale releases are dropped
        self._counters = {"hits_memory": 0, "hits_disk": 0, "misses": 0, "reused_memory_tokens": 0,
                          "reused_disk_tokens": 0, "evictions": 0, "spills": 0, "loads": 0,
                          "corrupt": 0, "disk_errors": 0}
        self._disk = self._open_disk(disk_dir) if disk_dir is not None else None

    # ---------------------------------------------------------------- public API

    def acquire(self, doc_id: str, tokens: list[int], *, max_reuse: int | None = None) -> Lease:
        """A cache holding the longest cached prefix of `tokens` (at most `max_reuse` positions).

        Pass `max_reuse=len(tokens) - 1` when the last position's logits are needed.
        """
        arr = np.asarray(tokens, dtype=np.int64)
        limit = len(arr) if max_reuse is None else max(0, min(max_reuse, len(arr)))
        with self._lock:
            own = self._mem.pop(doc_id, None)
            self._leased[doc_id] = self._epoch
            self._closing.discard(doc_id)
            best_n, best_src = 0, None
            if own is not None:
                best_n, best_src = common_prefix(own.tokens, arr, limit), own
            for entry in self._mem.values():
                if best_n >= limit:
                    break
                n = common_prefix(entry.tokens, arr, limit)
                if n > best_n:
                    best_n, best_src = n, entry
            if best_n < limit and self._disk is not None:
                found = self._disk_lookup(doc_id, arr, limit, better_than=best_n, check_doc=own is None)
                if found is not None:
                    n, cache = found
                    cache.truncate(n)
                    self._count("disk", n)
                    return Lease(doc_id, cache, n, "disk")
            if best_src is own and own is not None:
                own.cache.truncate(best_n)
                cache = own.cache
            elif best_src is not None:
                target = own.cache if own is not None else self._new_cache(len(arr), best_src.cache.dtype)
                cache = _copy_prefix(best_src.cache, best_n, target)
            else:
                cache = own.cache if own is not None else self._new_cache(len(arr), self.kv_dtype)
                cache.truncate(0)
            if best_n > 0:
                self._count("memory", best_n)
                return Lease(doc_id, cache, best_n, "memory")
            self._counters["misses"] += 1
            return Lease(doc_id, cache, 0, None)

    def release(self, doc_id: str, tokens: list[int], cache: KVCache) -> None:
        """Store `cache` (whose positions hold exactly `tokens`) as the document's entry."""
        if cache.batch != 1:
            raise ValueError("the store keeps batch-1 caches; release one row (KVCache.row)")
        if cache.length != len(tokens):
            raise ValueError(f"cache holds {cache.length} positions but {len(tokens)} token ids were given")
        self._check_shape(cache)
        entry = _Entry(np.asarray(tokens, dtype=np.int64), cache)
        with self._lock:
            epoch = self._leased.pop(doc_id, self._epoch)
            if epoch != self._epoch:
                return  # cleared while the caller held it
            self._mem.pop(doc_id, None)
            if doc_id in self._closing:
                self._closing.discard(doc_id)
                self._spill(doc_id, entry)
                return
            self._mem[doc_id] = entry
            self._enforce_budget(keep=doc_id)

    def close(self, doc_id: str) -> None:
        """The document was closed: spill its entry to disk and free its memory."""
        with self._lock:
            if doc_id in self._leased:
                self._closing.add(doc_id)
                return
            entry = self._mem.pop(doc_id, None)
            if entry is not None:
                self._spill(doc_id, entry)

    def clear(self) -> None:
        """Drop every entry, in memory and on disk (any model's)."""
        with self._lock:
            self._mem.clear()
            self._closing.clear()
            self._epoch += 1
            if self._disk is not None:
                try:
                    self._disk.clear()
                except Exception as exc:  # noqa: BLE001 - a broken cache dir must not stop the engine
                    self._disk_error("clear", exc)

    def stats(self) -> dict:
        with self._lock:
            out = dict(self._counters)
            out["entries"] = len(self._mem)
            out["leased"] = len(self._leased)
            out["memory_mb"] = self._memory_bytes() / _MB
            out["memory_budget_mb"] = self.memory_budget / _MB
            out["disk_mb"] = 0.0
            if self._disk is not None:
                try:
                    out["disk_mb"] = self._disk.volume() / _MB
                except Exception as exc:  # noqa: BLE001
                    self._disk_error("stats", exc)
            out["disk_budget_mb"] = self.disk_budget / _MB if self._disk is not None else 0.0
            return out

    def memory_tokens(self, doc_id: str) -> list[int] | None:
        """The token ids of a document's in-memory entry (None when it has none)."""
        with self._lock:
            entry = self._mem.get(doc_id)
            return entry.tokens.tolist() if entry is not None else None

    # ---------------------------------------------------------------- memory

    def _count(self, source: Source, n: int) -> None:
        self._counters[f"hits_{source}"] += 1
        self._counters[f"reused_{source}_tokens"] += n

    def _new_cache(self, n_tokens: int, dtype: torch.dtype) -> KVCache:
        return KVCache(self.cfg, batch=1, capacity=n_tokens + self.headroom, dtype=dtype, device=self.device)

    def _check_shape(self, cache: KVCache) -> None:
        shape = (cache.n_layers, cache.n_kv_heads, cache.head_dim)
        if shape != (self.cfg.n_layers, self.cfg.n_kv_heads, self.cfg.head_dim):
            raise ValueError(f"cache shape {shape} does not match the model's")

    def _memory_bytes(self) -> int:
        return sum(e.cache.nbytes() for e in self._mem.values())

    def _enforce_budget(self, keep: str) -> None:
        total = self._memory_bytes()
        while total > self.memory_budget:
            victim = next((d for d in self._mem if d != keep), None)
            if victim is None:
                break
            entry = self._mem.pop(victim)
            total -= entry.cache.nbytes()
            self._counters["evictions"] += 1
            self._spill(victim, entry)

    # ---------------------------------------------------------------- disk

    def _disk_settings(self) -> dict:
        return {"size_limit": int(self.disk_budget), "eviction_policy": "least-recently-used", "cull_limit": 0}

    def _open_disk(self, disk_dir: Path):
        """diskcache in `disk_dir`; a corrupt database there is set aside and replaced by an empty one."""
        return open_disk_cache(disk_dir, "KV-cache", log, **self._disk_settings())

    def _disk_error(self, what: str, exc: Exception) -> None:
        """Count and log a failed disk operation; a corrupt database is replaced on the spot."""
        self._counters["disk_errors"] += 1
        if is_corruption(exc) and self._disk is not None:
            self._disk = recover_disk_cache(self._disk, "KV-cache", exc, log, **self._disk_settings())
            return
        log.warning("KV-cache disk %s failed: %s", what, exc)

    def _doc_key(self, doc_id: str) -> str:
        return "d:" + hashlib.sha256(self._namespace + doc_id.encode("utf-8", "surrogatepass")).hexdigest()

    def _spill(self, doc_id: str, entry: _Entry) -> None:
        """Write an entry to disk (unless it is there already) and index its block prefixes."""
        if self._disk is None or entry.cache.length == 0:
            return
        n = entry.cache.length
        boundaries = list(range(self.block, n + 1, self.block))
        digests = prefix_digests(self._namespace, entry.tokens, boundaries + [n])
        key = digests[n]
        disk = self._disk
        try:
            fresh = ("m:" + key) not in disk or ("p:" + key) not in disk
            if fresh:
                size = 2 * n * self.cfg.n_layers * self.cfg.n_kv_heads * self.cfg.head_dim
                if size * torch.empty(0, dtype=self.disk_dtype).element_size() > self.disk_budget:
                    return
                token_bytes = entry.tokens.astype("<i4").tobytes()
                stream = _HashingReader(token_bytes, self._layer_arrays(entry.cache))
                disk.set("p:" + key, stream, read=True)  # streamed: no copy of the whole payload
                meta = {
                    "fingerprint": self.fingerprint, "version": self.format_version, "layout": LAYOUT_VERSION,
                    "n_layers": self.cfg.n_layers, "n_kv_heads": self.cfg.n_kv_heads,
                    "head_dim": self.cfg.head_dim, "length": n, "dtype": str(self.disk_dtype).split(".")[-1],
                    "tokens": base64.b64encode(token_bytes).decode("ascii"),
                    "sha256": stream.hexdigest(),
                }
                disk.set("m:" + key, json.dumps(meta).encode())
            with disk.transact():
                for b in boundaries:
                    disk.set("i:" + digests[b], key)
                doc_key = self._doc_key(doc_id)
                previous = disk.get(doc_key)
                disk.set(doc_key, key)
            if isinstance(previous, str) and previous != key:
                self._delete_entry(previous)  # the document's older version
            self._counters["spills"] += 1
            disk.cull()
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: keep serving from memory
            self._disk_error("write", exc)

    def _layer_arrays(self, cache: KVCache):
        """The payload, one layer's K or V at a time (all K layers, then all V layers).

        Every array yielded is the same buffer, refilled: the consumer must
        use it before asking for the next.
        """
        n = cache.length
        out = torch.empty(cache.n_kv_heads, n, cache.head_dim, dtype=self.disk_dtype)  # reused per layer
        view = (out.view(torch.int16) if self.disk_dtype == torch.bfloat16 else out).numpy()
        for buffers in (cache.k, cache.v):
            for t in buffers:
                out.copy_(t[0, :, :n])
                yield view

    def _delete_entry(self, key: str) -> None:
        for prefix in ("m:", "p:"):
            self._disk.delete(prefix + key)

    def _reject(self, key: str, why: str) -> None:
        """A corrupt or mismatched entry: log it, count it, delete it; it is never used."""
        self._counters["corrupt"] += 1
        log.warning("ignoring KV-cache entry %s…: %s", key[:12], why)
        try:
            self._delete_entry(key)
        except Exception as exc:  # noqa: BLE001
            self._disk_error("delete", exc)

    def _read_meta(self, key: str) -> tuple[dict, np.ndarray] | None:
        raw = self._disk.get("m:" + key)
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
            tokens = np.frombuffer(base64.b64decode(meta["tokens"], validate=True), dtype="<i4").astype(np.int64)
            expected = {"fingerprint": self.fingerprint, "version": self.format_version, "layout": LAYOUT_VERSION,
                        "n_layers": self.cfg.n_layers, "n_kv_heads": self.cfg.n_kv_heads,
                        "head_dim": self.cfg.head_dim}
            wrong = [name for name, value in expected.items() if meta.get(name) != value]
            if meta.get("dtype") not in _DTYPES or meta.get("length") != len(tokens) or not meta.get("sha256"):
                wrong.append("dtype/length/checksum")
        except Exception as exc:  # noqa: BLE001 - garbage bytes of any kind
            self._reject(key, f"unreadable metadata ({type(exc).__name__})")
            return None
        if wrong:
            self._reject(key, "mismatched " + ", ".join(wrong))
            return None
        return meta, tokens

    def _load(self, key: str, meta: dict, tokens: np.ndarray, want: int = 0) -> KVCache | None:
        """Read and verify an entry's payload, layer by layer; a bad one is rejected, never returned."""
        dtype = _DTYPES[meta["dtype"]]
        storage = torch.int16 if dtype == torch.bfloat16 else dtype
        n = meta["length"]
        layer_bytes = self.cfg.n_kv_heads * n * self.cfg.head_dim * torch.empty(0, dtype=dtype).element_size()
        handle = self._disk.get("p:" + key, read=True)
        if handle is None:
            self._reject(key, "payload missing")
            return None
        if isinstance(handle, bytes):  # small values live inside sqlite
            handle = io.BytesIO(handle)
        cache = self._new_cache(max(n, want), self.kv_dtype)
        h = hashlib.sha256(tokens.astype("<i4").tobytes())
        buf = bytearray(layer_bytes)
        with handle:
            for buffers in (cache.k, cache.v):
                for t in buffers:
                    got = handle.readinto(buf)
                    if got != layer_bytes:
                        self._reject(key, "payload is truncated")
                        return None
                    h.update(buf)
                    x = torch.frombuffer(buf, dtype=storage) if layer_bytes else torch.empty(0, dtype=storage)
                    t[0, :, :n] = x.view(dtype).reshape(self.cfg.n_kv_heads, n, self.cfg.head_dim)
            if handle.read(1):
                self._reject(key, "payload is longer than its metadata says")
                return None
        if h.hexdigest() != meta["sha256"]:
            self._reject(key, "checksum mismatch")
            return None
        cache.length = n
        self._counters["loads"] += 1
        return cache

    def _disk_lookup(self, doc_id: str, arr: np.ndarray, limit: int, better_than: int,
                     check_doc: bool) -> tuple[int, KVCache] | None:
        """The longest verified prefix on disk, when it beats `better_than` positions.

        `check_doc`: also try the entry last spilled for this document (skipped
        when its in-memory entry exists, which is newer).
        """
        try:
            return self._disk_lookup_unguarded(doc_id, arr, limit, better_than, check_doc)
        except Exception as exc:  # noqa: BLE001
            self._disk_error("read", exc)
            return None

    def _disk_lookup_unguarded(self, doc_id, arr, limit, better_than, check_doc):
        disk, B = self._disk, self.block
        best_n, best = better_than, None
        read: dict[str, tuple | None] = {}  # one metadata read per entry key

        def consider(key: object, at_least: int) -> bool:
            nonlocal best_n, best
            if not isinstance(key, str):
                return False
            if key not in read:
                read[key] = self._read_meta(key)
            if read[key] is None:
                return False
            meta, tokens = read[key]
            n = common_prefix(tokens, arr, limit)
            if n < at_least:
                return False  # a collision or a stale index: the ids disagree
            if n > best_n:
                best_n, best = n, (key, meta, tokens)
            return True

        if check_doc:
            consider(disk.get(self._doc_key(doc_id)), 1)
        # Only blocks that end past what we already have: a disk load to gain
        # less than one block is not worth its I/O, and typing stays disk-free.
        ks = [k for k in range(limit // B, 0, -1) if k * B > best_n]
        digests = prefix_digests(self._namespace, arr, [k * B for k in ks]) if ks else {}
        for k in ks:
            if k * B <= best_n or consider(disk.get("i:" + digests[k * B]), k * B):
                break
        if best is None:
            return None
        cache = self._load(*best, want=len(arr))
        return (best_n, cache) if cache is not None else None


class _HashingReader:
    """A file-like `read()` over a sequence of arrays that hashes what it hands out.

    diskcache copies it to a file chunk by chunk, so the payload is never
    assembled in memory; the digest covers the token ids, then the payload.
    """

    def __init__(self, token_bytes: bytes, arrays) -> None:
        self._hash = hashlib.sha256(token_bytes)
        self._arrays = iter(arrays)

    def read(self, size: int = -1) -> memoryview | bytes:
        """The next array's bytes (valid until the next call), b"" at the end."""
        for array in self._arrays:
            data = memoryview(array).cast("B")
            if data.nbytes:
                self._hash.update(data)
                return data
        return b""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
