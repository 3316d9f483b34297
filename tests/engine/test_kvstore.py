"""KVStore: longest-prefix reuse from memory and disk, eviction, persistence, corruption.

No model is needed: `prefill` below stands in for one. It writes, at every
position i, K/V drawn from a generator seeded by the token ids up to i, so like
a causal model the K/V of a position depend on its whole prefix. A reused
cache is correct when its first `reused` positions equal a fresh prefill of
the request's ids.
"""
from __future__ import annotations

import logging
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystroke.engine.cache import kvstore as kvstore_module
from keystroke.engine.cache.kvcache import KVCache
from keystroke.engine.cache.kvstore import KVStore
from keystroke.engine.model import ModelConfig

CFG = ModelConfig(family="llama", vocab_size=50, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=32, hidden_dim=128)
MB = 2 ** 20


def fake_kv(tokens: list[int], start: int, end: int, cfg: ModelConfig = CFG) -> torch.Tensor:
    """(2, n_layers, n_kv_heads, end - start, head_dim): K/V of positions [start, end)."""
    h, out = 0, []
    for i, t in enumerate(tokens[:end]):
        h = (h * 1_000_003 + t + 1) % (2 ** 61 - 1)
        if i >= start:
            g = torch.Generator().manual_seed(h)
            out.append(torch.randn(2, cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, generator=g))
    if not out:
        return torch.zeros(2, cfg.n_layers, cfg.n_kv_heads, 0, cfg.head_dim)
    return torch.stack(out, dim=3)


def prefill(cache: KVCache, tokens: list[int]) -> None:
    """What the model would do: compute positions cache.length..len(tokens)."""
    start = cache.length
    kv = fake_kv(tokens, start, len(tokens)).to(cache.device)
    cache.ensure_capacity(len(tokens))
    for layer in range(cache.n_layers):
        cache.write(layer, start, kv[0, layer][None], kv[1, layer][None])
    cache.length = len(tokens)


def stored(cache: KVCache, n: int) -> torch.Tensor:
    return torch.stack([torch.stack([t[0, :, :n] for t in cache.k]),
                        torch.stack([t[0, :, :n] for t in cache.v])]).float().cpu()


def assert_holds(cache: KVCache, tokens: list[int], n: int, atol: float = 0.0) -> None:
    """The cache's first n positions are exactly (or within atol) a fresh prefill of tokens[:n]."""
    assert cache.length == n
    expected = fake_kv(tokens, 0, n)
    if atol == 0.0:
        assert torch.equal(stored(cache, n), expected)
    else:
        torch.testing.assert_close(stored(cache, n), expected, atol=atol, rtol=atol)


def serve(store: KVStore, doc: str, tokens: list[int], atol: float = 0.0):
    """One engine request: acquire, check what was reused, prefill the rest, release."""
    lease = store.acquire(doc, tokens)
    assert_holds(lease.cache, tokens, lease.reused, atol=atol)
    prefill(lease.cache, tokens)
    store.release(doc, tokens, lease.cache)
    return lease


def toks(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(CFG.vocab_size) for _ in range(n)]


def entry_bytes(n_tokens: int, headroom: int = 128) -> int:
    return 2 * CFG.n_layers * CFG.n_kv_heads * (n_tokens + headroom) * CFG.head_dim * 4


def fp32_store(tmp_path: Path | None = None, **kw) -> KVStore:
    kw.setdefault("block", 16)
    kw.setdefault("kv_dtype_on_disk", torch.float32)
    return KVStore("model-a", CFG, disk_dir=tmp_path, **kw)


# ---------------------------------------------------------------- memory reuse

def test_own_entry_reused_without_copy_and_appending_costs_only_new_tokens():
    store = fp32_store()
    t = toks(100, 1)
    first = serve(store, "a.py", t)
    assert (first.reused, first.source) == (0, None)
    lease = store.acquire("a.py", t + [7, 8, 9])
    assert (lease.reused, lease.source) == (100, "memory")
    assert lease.cache is first.cache  # the document's own buffers, rewound not copied
    assert_holds(lease.cache, t, 100)


def test_edit_in_the_middle_reuses_up_to_the_first_changed_token():
    store = fp32_store()
    t = toks(120, 2)
    serve(store, "a.py", t)
    edited = t[:37] + [(t[37] + 1) % 50] + t[38:]
    lease = serve(store, "a.py", edited)
    assert (lease.reused, lease.source) == (37, "memory")
    deleted = edited[:50] + edited[60:]
    assert serve(store, "a.py", deleted).reused == 50
    assert store.memory_tokens("a.py") == deleted


def test_max_reuse_leaves_the_last_position_to_compute():
    store = fp32_store()
    t = toks(40, 3)
    serve(store, "a.py", t)
    lease = store.acquire("a.py", t, max_reuse=len(t) - 1)
    assert lease.reused == 39 and lease.cache.length == 39


def test_other_documents_entry_is_copied_not_shared():
    store = fp32_store()
    header = toks(60, 4)
    a = header + toks(30, 5)
    serve(store, "a.py", a)
    b = header + toks(30, 6)
    lease = store.acquire("b.py", b)
    assert (lease.reused, lease.source) == (60 + np.argmax(np.array(a[60:]) != np.array(b[60:])), "memory")
    n = lease.reused
    prefill(lease.cache, b)
    store.release("b.py", b, lease.cache)
    # a.py's entry was not touched by b.py's prefill
    again = store.acquire("a.py", a)
    assert again.reused == len(a) and again.cache is not lease.cache
    assert_holds(again.cache, a, len(a))
    assert n >= 60


def test_release_checks_that_ids_match_the_cache():
    store = fp32_store()
    lease = store.acquire("a.py", toks(10, 1))
    prefill(lease.cache, toks(10, 1))
    with pytest.raises(ValueError, match="10 positions"):
        store.release("a.py", toks(9, 1), lease.cache)
    with pytest.raises(ValueError, match="batch-1"):
        store.release("a.py", toks(10, 1), lease.cache.expanded(2))


# ---------------------------------------------------------------- eviction and disk

def test_lru_eviction_spills_to_disk_and_comes_back_exactly(tmp_path):
    store = fp32_store(tmp_path, memory_budget_mb=2.5 * entry_bytes(100) / MB)
    docs = {f"d{i}.py": toks(100, 10 + i) for i in range(3)}
    for doc, t in docs.items():
        serve(store, doc, t)
    s = store.stats()
    assert (s["entries"], s["evictions"], s["spills"]) == (2, 1, 1)
    assert s["memory_mb"] <= 2.5 * entry_bytes(100) / MB
    assert store.memory_tokens("d0.py") is None  # the least recently used went
    lease = store.acquire("d0.py", docs["d0.py"])
    assert (lease.reused, lease.source) == (100, "disk")
    assert_holds(lease.cache, docs["d0.py"], 100)  # fp32 on disk: bit-exact
    assert store.stats()["hits_disk"] == 1


def test_fp16_on_disk_within_fp16_tolerance_and_half_the_size(tmp_path):
    t = toks(100, 20)
    sizes = {}
    for dtype in (torch.float16, torch.float32):
        store = KVStore("m", CFG, disk_dir=tmp_path / str(dtype), block=16, kv_dtype_on_disk=dtype)
        serve(store, "a.py", t)
        store.close("a.py")
        assert store.stats()["entries"] == 0
        sizes[dtype] = sum(p.stat().st_size for p in (tmp_path / str(dtype)).rglob("*.val"))
        lease = store.acquire("a.py", t)
        assert (lease.reused, lease.source) == (100, "disk")
        if dtype == torch.float16:
            assert not torch.equal(stored(lease.cache, 100), fake_kv(t, 0, 100))  # really went through fp16
            assert_holds(lease.cache, t, 100, atol=2e-3)
        else:
            assert_holds(lease.cache, t, 100)
    assert sizes[torch.float16] * 2 == sizes[torch.float32]
    store = KVStore("m", CFG, disk_dir=tmp_path / "bf16", block=16, kv_dtype_on_disk=torch.bfloat16)
    serve(store, "a.py", t)
    store.close("a.py")
    lease = store.acquire("a.py", t)
    assert lease.source == "disk"
    assert_holds(lease.cache, t, 100, atol=2e-2)


def test_typing_in_an_open_document_never_reads_the_disk(tmp_path, monkeypatch):
    store = fp32_store(tmp_path)
    t = toks(100, 21)
    serve(store, "a.py", t)
    store.close("a.py")
    serve(store, "other.py", toks(100, 22))
    serve(store, "a.py", t)  # back from disk once
    reads = []
    real = store._read_meta
    monkeypatch.setattr(store, "_read_meta", lambda key: reads.append(key) or real(key))
    for extra in toks(40, 23):  # crosses two block boundaries (block 16)
        t = t + [extra]
        lease = serve(store, "a.py", t)
        assert lease.reused == len(t) - 1 and lease.source == "memory"
    assert reads == [] and store.stats()["loads"] == 1


def test_restart_comes_back_warm_for_the_same_and_for_a_new_document(tmp_path):
    t = toks(150, 30)
    store = fp32_store(tmp_path)
    serve(store, "a.py", t)
    store.close("a.py")
    del store
    restarted = fp32_store(tmp_path)
    lease = restarted.acquire("a.py", t + [1, 2])
    assert (lease.reused, lease.source) == (150, "disk")
    assert_holds(lease.cache, t, 150)
    # a new uri whose text shares 70 tokens: found through the block index (block 16)
    other = t[:70] + [(t[70] + 1) % 50] + toks(20, 31)
    lease = restarted.acquire("new.py", other)
    assert (lease.reused, lease.source) == (70, "disk")
    assert_holds(lease.cache, other, 70)


def test_memory_entry_preferred_when_disk_offers_no_more(tmp_path):
    store = fp32_store(tmp_path)
    t = toks(80, 32)
    serve(store, "a.py", t)
    store.close("a.py")
    serve(store, "a.py", t)  # back from disk, now in memory again
    lease = store.acquire("a.py", t + [3])
    assert lease.source == "memory" and store.stats()["loads"] == 1


def test_close_while_leased_spills_on_release_and_clear_drops_it(tmp_path):
    store = fp32_store(tmp_path)
    t = toks(50, 33)
    lease = store.acquire("a.py", t)
    store.close("a.py")
    prefill(lease.cache, t)
    store.release("a.py", t, lease.cache)
    assert store.stats()["entries"] == 0 and store.stats()["spills"] == 1
    lease = store.acquire("a.py", t)
    assert lease.source == "disk"
    store.clear()
    store.release("a.py", t, lease.cache)
    assert store.stats()["entries"] == 0
    assert store.acquire("a.py", t).source is None


def test_a_lease_never_handed_back_leaves_nothing_behind(tmp_path):
    store = fp32_store(tmp_path)
    t = toks(30, 34)
    serve(store, "a.py", t)
    lease = store.acquire("a.py", t + [1, 2])
    lease.cache.length += 1  # a forward pass that died half-way, its cache never released
    assert store.stats()["entries"] == 0  # the store forgot the entry when it was leased
    assert store.acquire("a.py", t).source is None  # the half-written cache is not reused


def test_disk_size_bound_is_respected(tmp_path):
    budget_mb = 0.6
    store = fp32_store(tmp_path, memory_budget_mb=0.0, disk_budget_mb=budget_mb)
    docs = [toks(100, 40 + i) for i in range(12)]  # ~100 KB of payload each
    for i, t in enumerate(docs):
        serve(store, f"d{i}.py", t)
    assert store.stats()["spills"] == 11  # every entry but the newest spilled
    store.close("d11.py")
    assert store.stats()["disk_mb"] <= budget_mb
    assert store.acquire("d0.py", docs[0]).source is None  # the oldest were culled
    assert store.acquire("d11.py", docs[11]).source == "disk"


# ---------------------------------------------------------------- bad entries

def _payload_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.val"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_payload_is_ignored_logged_and_deleted(tmp_path, caplog, damage):
    t = toks(100, 50)
    store = fp32_store(tmp_path)
    serve(store, "a.py", t)
    store.close("a.py")
    (payload,) = [p for p in _payload_files(tmp_path) if p.stat().st_size >= entry_bytes(100, 0)]
    data = bytearray(payload.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
        payload.write_bytes(bytes(data))
    elif damage == "truncate":
        payload.write_bytes(bytes(data[: len(data) - 100]))
    else:
        payload.unlink()
    restarted = fp32_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="keystroke.kvstore"):
        lease = restarted.acquire("a.py", t)
    assert (lease.reused, lease.source) == (0, None)
    assert restarted.stats()["corrupt"] == 1
    assert any("ignoring KV-cache entry" in r.getMessage() for r in caplog.records)
    assert not any(p.exists() for p in [payload]) or damage == "delete"
    # deleted: asking again finds nothing and counts nothing new
    assert restarted.acquire("a.py", t).source is None
    assert restarted.stats()["corrupt"] == 1


def test_garbage_metadata_is_ignored(tmp_path, caplog):
    t = toks(40, 51)
    store = fp32_store(tmp_path)
    serve(store, "a.py", t)
    store.close("a.py")
    metas = [k for k in store._disk if k.startswith("m:")]
    store._disk.set(metas[0], b"\x00not json")
    with caplog.at_level(logging.WARNING, logger="keystroke.kvstore"):
        assert fp32_store(tmp_path).acquire("a.py", t).source is None
    assert "unreadable metadata" in caplog.text


@pytest.mark.parametrize("change", ["fingerprint", "version", "shape"])
def test_mismatched_entry_is_never_used(tmp_path, caplog, change):
    t = toks(64, 52)
    a = fp32_store(tmp_path)
    serve(a, "a.py", t)
    a.close("a.py")
    if change == "fingerprint":
        b = KVStore("model-b", CFG, disk_dir=tmp_path, block=16)
    elif change == "version":
        b = KVStore("model-a", CFG, disk_dir=tmp_path, block=16, format_version=2)
    else:
        cfg3 = ModelConfig(family="llama", vocab_size=50, dim=64, n_layers=3, n_heads=4, n_kv_heads=2,
                           head_dim=32, hidden_dim=128)
        b = KVStore("model-a", cfg3, disk_dir=tmp_path, block=16)
    if change != "shape":
        # different keys: a plain miss
        assert b.acquire("a.py", t).source is None and b.stats()["corrupt"] == 0
        b._namespace = a._namespace  # now make the keys collide, as a hash collision would
    with caplog.at_level(logging.WARNING, logger="keystroke.kvstore"):
        lease = b.acquire("a.py", t)
    assert (lease.reused, lease.source) == (0, None)
    assert b.stats()["corrupt"] == 1
    assert "mismatched" in caplog.text
    assert a.acquire("a.py", t).source is None  # it was deleted


def test_colliding_hashes_never_yield_a_wrong_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(kvstore_module, "prefix_digests",
                        lambda ns, tokens, lengths: {n: "same" for n in lengths})
    store = fp32_store(tmp_path)
    x = toks(100, 60)
    serve(store, "x.py", x)
    store.close("x.py")
    unrelated = toks(100, 61)
    lease = store.acquire("y.py", unrelated)
    assert (lease.reused, lease.source) == (0, None)
    shares_40 = x[:40] + [(x[40] + 1) % 50] + toks(59, 62)
    lease = store.acquire("z.py", shares_40)
    assert (lease.reused, lease.source) == (40, "disk")  # exactly the true common prefix
    assert_holds(lease.cache, shares_40, 40)


def test_unusable_disk_dir_falls_back_to_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="keystroke.kvstore"):
        store = KVStore("m", CFG, disk_dir=blocker / "cache")
    assert "memory only" in caplog.text
    serve(store, "a.py", toks(10, 1))
    store.close("a.py")
    assert store.stats()["disk_mb"] == 0.0


# ---------------------------------------------------------------- properties

edits = st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace", "type", "close"]),
                           st.integers(0, 10_000), st.lists(st.integers(0, 49), min_size=1, max_size=12)),
                 min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.lists(st.integers(0, 49), min_size=1, max_size=80), steps=edits)
def test_any_edit_sequence_reuses_exactly_the_common_prefix(tmp_path_factory, start, steps):
    store = KVStore("m", CFG, disk_dir=tmp_path_factory.mktemp("kv"), block=8, kv_dtype_on_disk=torch.float32)
    tokens = list(start)
    serve(store, "a.py", tokens)
    previous, seen = tokens, [tokens]
    for op, where, ids in steps:
        at = where % (len(tokens) + 1)
        if op == "insert":
            tokens = tokens[:at] + ids + tokens[at:]
        elif op == "delete":
            tokens = tokens[:at] + tokens[at + len(ids):]
        elif op == "replace":
            tokens = tokens[:at] + ids + tokens[at + len(ids):]
        elif op == "type":
            tokens = tokens + ids
        else:
            store.close("a.py")
        lease = serve(store, "a.py", tokens)  # serve checks the reused contents
        common = kvstore_module.common_prefix(np.array(previous), np.array(tokens))
        if lease.reused > common:
            # more than memory held: an earlier version's blocks on disk (an edit undone after a close)
            assert lease.source == "disk" and any(v[:lease.reused] == tokens[:lease.reused] for v in seen)
        else:
            assert lease.reused == common
            assert lease.source == (None if lease.reused == 0 else "disk" if op == "close" else "memory")
        previous = tokens
        seen.append(tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_caches_live_on_the_models_device(tmp_path):
    store = fp32_store(tmp_path, device="cuda", memory_budget_mb=0.0)
    a, b = toks(100, 80), toks(100, 81)
    lease = serve(store, "a.py", a)
    assert lease.cache.device.type == "cuda"
    serve(store, "b.py", b)  # evicts a.py to disk
    lease = store.acquire("a.py", a)
    assert lease.source == "disk" and lease.cache.k[0].device.type == "cuda"
    assert_holds(lease.cache, a, 100)
    shared = b[:50] + toks(10, 82)
    lease = store.acquire("c.py", shared)
    assert lease.source == "memory" and lease.reused == 50 and lease.cache.k[0].device.type == "cuda"
    assert_holds(lease.cache, shared, 50)


def test_threads_share_the_store_safely(tmp_path):
    store = fp32_store(tmp_path, memory_budget_mb=3 * entry_bytes(60) / MB)
    errors: list[BaseException] = []
    stop = threading.Event()
    header = toks(20, 70)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                doc = f"d{rng.randrange(4)}.py"
                t = header + toks(rng.randrange(1, 40), rng.randrange(6))
                lease = store.acquire(doc, t)
                assert_holds(lease.cache, t, lease.reused)
                prefill(lease.cache, t)
                store.release(doc, t, lease.cache)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def closer() -> None:
        rng = random.Random(99)
        while not stop.is_set():
            store.close(f"d{rng.randrange(4)}.py")
            if rng.random() < 0.05:
                store.clear()
            stop.wait(0.001)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    side = threading.Thread(target=closer)
    side.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    side.join()
    assert not errors, errors
    s = store.stats()
    assert s["leased"] == 0 and s["hits_memory"] + s["hits_disk"] > 0
