"""A damaged cache on disk never changes or empties a completion (issue #15, items 12 and 13).

A garbled `responses/cache.db` made 7 of 8 completions empty ("database disk
image is malformed", raised again by the `delete` in the error handler), and
a response row holding `{}` was served as a hit with no candidates. A corrupt
database is now set aside and rebuilt with one warning, and a row is only
used when it is exactly what `put` writes.
"""
from __future__ import annotations

import json
import logging
import random
import sqlite3

import diskcache
import pytest

from keystroke.engine import Engine
from keystroke.engine.api import Candidate, CompletionRequest, SamplingParams, StopPolicy
from keystroke.engine.cache.responses import ResponseCache, make_key
from tests.tiny import make_tiny_model_dir

SOURCE = '''import os
import sys


def read_config(path):
    """Read a config file and return its lines."""
    with open(path) as f:
        return [line.strip() for line in f]


class Worker:
    def __init__(self, name, jobs):
        self.name = name
        self.jobs = list(jobs)

    def run(self):
        for job in self.jobs:
            print(self.name, job)
'''
# Eight cursors in two documents, each prompt well past one KV block (64 tokens).
CURSORS = [("a.py", SOURCE.index(marker) + len(marker)) for marker in
           ("return [", "self.name = ", "for job in ", "print(")] + \
          [("b.py", SOURCE.index(marker) + len(marker)) for marker in
           ("with open(", "self.jobs = ", "def run(", "import sys\n")]
MALFORMED = [b"{}", b"[]", b"null", b'"text"', b"[[1, 2, 3]]", b'[["x", "eos"]]', b'[["x", "eos", -1]]',
             b'[["x", "deadline", 2]]', b'[["x", "eos", true]]', b"\xff{not json", b"[" * 100_000,
             "a str", 12, {"a": 1}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", family="llama", seed=0)


def requests() -> list[CompletionRequest]:
    return [CompletionRequest(doc_id=doc, prefix=SOURCE[:at], suffix=SOURCE[at:],
                              stop=StopPolicy(max_tokens=8)) for doc, at in CURSORS]


def complete_all(engine: Engine) -> list[list[str]]:
    """Greedy texts of every request; each document is closed after its turn, so its KV goes to disk."""
    out = []
    for i, req in enumerate(requests()):
        out.append([c.text for c in engine.complete(req).candidates])
        if i in (3, 7):
            engine.close_document(req.doc_id)
    return out


def close_disks(engine: Engine) -> None:
    """What the end of the server process does: sqlite folds its WAL back into cache.db."""
    for disk in (engine.responses._disk, engine.store._disk):
        if disk is not None:
            disk.close()


def garble(path, how: str, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rnd = random.Random(seed)
    if how == "rows":  # only the pages of the Cache table: the database opens, its reads fail
        con = sqlite3.connect(str(path))
        page = con.execute("PRAGMA page_size").fetchone()[0]
        roots = [r for (r,) in con.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'Cache'")]
        con.close()
        for root in roots:
            data[(root - 1) * page:root * page] = rnd.randbytes(page)
    elif how == "middle":  # overwrite the middle half: b-tree pages, not only the header
        a, b = len(data) // 4, 3 * len(data) // 4
        data[a:b] = rnd.randbytes(b - a)
    elif how == "truncate":
        del data[len(data) // 3:]
    elif how == "random":
        data = bytearray(rnd.randbytes(len(data)))
    path.write_bytes(bytes(data))


def warnings_of(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def clean(model_dir, tmp_path_factory):
    """The answers of an engine on a clean cache directory (all computed by the model)."""
    engine = Engine.load(model_dir, quant="fp32", cache_dir=tmp_path_factory.mktemp("clean"))
    answers = complete_all(engine)
    close_disks(engine)
    assert all(texts and any(texts) for texts in answers[:4]), answers
    return answers


def filled_cache(model_dir, cache_dir, clean) -> None:
    engine = Engine.load(model_dir, quant="fp32", cache_dir=cache_dir)
    assert complete_all(engine) == clean
    assert engine.stats()["kv"]["spills"] > 0 and engine.responses.stats()["stores"] == len(CURSORS)
    close_disks(engine)


@pytest.mark.parametrize("how", ["rows", "middle", "truncate", "random"])
def test_garbled_cache_databases_are_set_aside_and_rebuilt(model_dir, tmp_path, clean, caplog, how):
    filled_cache(model_dir, tmp_path, clean)
    for sub in ("responses", "kv"):
        garble(tmp_path / sub / "cache.db", how, seed=len(sub))
    with caplog.at_level(logging.WARNING):
        engine = Engine.load(model_dir, quant="fp32", cache_dir=tmp_path)
        assert complete_all(engine) == clean
        assert complete_all(engine) == clean  # served from the rebuilt caches now
    assert engine.stats()["response_cache_hits"] == len(CURSORS)
    for logger, sub in (("keystroke.response_cache", "responses"), ("keystroke.kvstore", "kv")):
        said = warnings_of(caplog, logger)
        assert len(said) == 1 and "corrupt" in said[0] and "cache.db.corrupt-" in said[0], said
        assert len(list((tmp_path / sub).glob("cache.db.corrupt-*"))) == 1


def test_malformed_rows_are_misses_and_dropped(model_dir, tmp_path, clean, caplog):
    filled_cache(model_dir, tmp_path, clean)
    with diskcache.Cache(str(tmp_path / "responses")) as disk:
        keys = list(disk.iterkeys())
        assert len(keys) == len(CURSORS)
        for i, key in enumerate(keys):
            disk.set(key, MALFORMED[i % len(MALFORMED)], expire=600)
    with diskcache.Cache(str(tmp_path / "kv")) as disk:
        for key in [k for k in disk.iterkeys() if k.startswith("m:")]:
            disk.set(key, b"{}")
    with caplog.at_level(logging.WARNING):
        engine = Engine.load(model_dir, quant="fp32", cache_dir=tmp_path)
        assert complete_all(engine) == clean
    assert engine.stats()["response_cache_hits"] == 0
    said = warnings_of(caplog, "keystroke.response_cache")
    assert len(said) == 1 and "unreadable" in said[0], said
    close_disks(engine)
    with diskcache.Cache(str(tmp_path / "responses")) as disk:  # the good answers took their place
        assert sorted(json.loads(disk[k])[0][0] for k in keys) == sorted(texts[0] for texts in clean)


# ------------------------------------------------------------ the caches alone, no model

GREEDY = SamplingParams()
STOP = StopPolicy(max_tokens=16, mode="line")
ANSWER = [Candidate("return x", "line", 3)]


def key(i: int = 0) -> str:
    return make_key("m", [1, 2, 3, i], GREEDY, STOP, 1)


@pytest.mark.parametrize("row", MALFORMED, ids=[repr(r)[:20] for r in MALFORMED])
def test_every_malformed_row_is_a_miss(tmp_path, row):
    cache = ResponseCache(tmp_path)
    cache._disk.set(key(), row)
    assert cache.get(key()) is None
    assert key() not in cache._disk  # dropped
    assert cache.stats()["malformed"] == 1
    assert cache.put(key(), ANSWER) and ResponseCache(tmp_path).get(key()) == ANSWER


def test_an_empty_answer_is_not_stored():
    assert not ResponseCache(None).put(key(), [])


def test_a_database_garbled_while_open_is_replaced(tmp_path, caplog):
    writer = ResponseCache(tmp_path)
    for i in range(200):
        writer.put(key(i), ANSWER)
    writer._disk.close()  # its WAL goes into cache.db
    cache = ResponseCache(tmp_path)  # sound when opened...
    garble(tmp_path / "cache.db", "middle")  # ...and garbled under it
    with caplog.at_level(logging.WARNING, logger="keystroke.response_cache"):
        for i in range(200):
            assert cache.get(key(i)) in (None, ANSWER)  # no exception, ever
            cache.put(key(i), ANSWER)
        assert all(cache.get(key(i)) == ANSWER for i in range(200))
    said = warnings_of(caplog, "keystroke.response_cache")
    assert len(said) == 1 and "corrupt" in said[0], said
    assert len(list(tmp_path.glob("cache.db.corrupt-*"))) == 1


def test_a_locked_database_is_not_mistaken_for_a_corrupt_one(tmp_path):
    from keystroke.engine.cache.responses import is_corruption

    assert is_corruption(sqlite3.DatabaseError("database disk image is malformed"))
    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    assert not is_corruption(OSError("disk full"))


def test_a_kv_database_garbled_while_open_is_replaced(tmp_path, caplog):
    import torch

    from keystroke.engine.cache.kvstore import KVStore
    from keystroke.engine.model import ModelConfig

    cfg = ModelConfig(family="llama", vocab_size=50, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=32, hidden_dim=128)
    docs = {f"doc{i}": [i % 50] + list(range(1, 70)) for i in range(20)}
    writer = KVStore("fp", cfg, disk_dir=tmp_path, block=16)
    for doc, tokens in docs.items():
        lease = writer.acquire(doc, tokens)
        lease.cache.ensure_capacity(len(tokens))
        lease.cache.length = len(tokens)
        writer.release(doc, tokens, lease.cache)
        writer.close(doc)
    assert writer.stats()["spills"] == len(docs)
    writer._disk.close()
    store = KVStore("fp", cfg, disk_dir=tmp_path, block=16)
    garble(tmp_path / "cache.db", "rows")
    with caplog.at_level(logging.WARNING, logger="keystroke.kvstore"):
        for doc, tokens in docs.items():
            lease = store.acquire(doc, tokens)  # never raises; a miss at worst
            store.release(doc, tokens[:lease.reused], lease.cache)
            store.close(doc)
        assert isinstance(store.stats()["disk_mb"], float)
    said = warnings_of(caplog, "keystroke.kvstore")
    assert len(said) == 1 and "corrupt" in said[0], said
    assert len(list(tmp_path.glob("cache.db.corrupt-*"))) == 1
    assert torch.is_tensor(store.acquire("doc0", docs["doc0"]).cache.k[0])


class _Trap:
    """Unpickling this creates a file: proof that a pickle in the cache was run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_value_in_a_cache_folder_is_never_unpickled(tmp_path):
    import diskcache

    from keystroke.engine.cache.disk import open_disk_cache
    from keystroke.engine.cache.responses import ResponseCache
    folder, trap = tmp_path / "responses", tmp_path / "unpickled"
    with diskcache.Cache(str(folder)) as hostile:          # someone else's cache writer, with pickle
        hostile.set("k", _Trap(str(trap)))
        hostile.set("big", [_Trap(str(trap))] * 20_000)   # large enough to live in a file of its own
    safe = open_disk_cache(folder, "test cache")
    assert safe.get("k") is None and safe.get("big") is None
    assert not trap.exists()
    cache = ResponseCache(folder)
    assert cache.get("k") is None and not trap.exists()


@pytest.mark.real_model
def test_on_the_real_model_completions_after_corruption_equal_a_clean_cache(tmp_path):
    """The default model, its default weights: garbled cache databases change no completion."""
    from keystroke.engine import registry
    path = registry.resolve(registry.DEFAULT_MODEL)
    clean_engine = Engine.load(path, cache_dir=tmp_path / "clean")
    want = complete_all(clean_engine)
    close_disks(clean_engine)
    del clean_engine
    hurt = tmp_path / "hurt"
    filled = Engine.load(path, cache_dir=hurt)
    assert complete_all(filled) == want
    close_disks(filled)
    del filled
    for sub in ("responses", "kv"):
        garble(hurt / sub / "cache.db", "middle", seed=len(sub))
    again = Engine.load(path, cache_dir=hurt)
    assert complete_all(again) == want
    assert len(list((hurt / "kv").glob("cache.db.corrupt-*"))) == 1
