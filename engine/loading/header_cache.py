"""What a GGUF file's header yields (config, summary, tokenizer), cached so that a later start skips parsing it.

Parsing the header walks every token and merge string in Python (~0.25 s for
Qwen2.5's 300k strings) and imports the `gguf` package (~0.1 s); with the
packed weights cached (packed.py) nothing else needs the header. After the
first load, `<cache>/headers/<fingerprint>.json` records the model config, the
summary and how to rebuild the tokenizer from its cache file (tokenizer.py).

The entry is found by the file's cheap fingerprint (loader.fingerprint: name,
size, first and last MiB) and trusted only if it names that fingerprint, was
written by the same code (a digest of the modules that derive it), its own
checksum holds, and the sha256 of the file's first `header_len` bytes (the
whole header: metadata, vocabulary, tensor table) equals the one recorded.
So a GGUF changed anywhere in its header never reuses an entry, whatever its
size and ends. Otherwise the entry is deleted and the header parsed again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..model import ModelConfig
from ..tokenizer import Tokenizer

log = logging.getLogger("keystroke.engine")

FORMAT_VERSION = 1
_DERIVED_BY = ("gguf.py", "header_cache.py", "../tokenizer.py", "../model.py")
_code_digest: str | None = None


def code_digest() -> str:
    """A digest of the source that turns a header into config and tokenizer: changed code, new entries."""
    global _code_digest
    if _code_digest is None:
        digest = hashlib.sha256(f"header-v{FORMAT_VERSION}".encode())
        here = Path(__file__).parent
        for name in _DERIVED_BY:
            digest.update((here / name).read_bytes())
        _code_digest = digest.hexdigest()[:32]
    return _code_digest


def tokenizer_dir(root: Path) -> Path:
    return Path(root) / "tokenizers"


def entry_path(root: Path, fingerprint: str) -> Path:
    return Path(root) / "headers" / f"{fingerprint}.json"


def header_sha256(path: Path, length: int) -> str:
    with open(path, "rb") as f:
        data = f.read(length)
    if len(data) != length:
        raise ValueError("the file is shorter than its recorded header")
    return hashlib.sha256(data).hexdigest()


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(root: Path, fingerprint: str, path: Path, header_len: int, cfg: ModelConfig, summary: dict,
         tokenizer: Tokenizer) -> None:
    """Record what `path`'s header gave (atomically; a failure only costs the next start a parse)."""
    recipe = tokenizer.recipe()
    if tokenizer.cache_file is None or tokenizer.cache_file.parent != tokenizer_dir(root):
        return   # the tokenizer is not cached beside: nothing to rebuild it from
    body = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "code": code_digest(),
            "header_len": header_len, "header_sha256": header_sha256(path, header_len),
            "config": dataclasses.asdict(cfg), "summary": summary, "tokenizer": recipe}
    target = entry_path(root, fingerprint)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"sha256": _checksum(body), "body": body}))
        os.replace(partial, target)
    except OSError as exc:
        log.warning("could not cache the model header in %s: %s", target, exc)
    finally:
        partial.unlink(missing_ok=True)


def load(root: Path, fingerprint: str, path: Path) -> tuple[ModelConfig, dict, Tokenizer] | None:
    """(config, summary, tokenizer) of `path` from its checked entry; None (the entry deleted) if unusable."""
    target = entry_path(root, fingerprint)
    try:
        raw = target.read_bytes()
    except OSError:
        return None   # no entry yet
    try:
        outer = json.loads(raw)
        body = outer["body"]
        if outer["sha256"] != _checksum(body):
            raise ValueError("its checksum does not match")
        if body["format"] != FORMAT_VERSION or body["code"] != code_digest():
            raise ValueError("it was written by another version of keystroke")
        if body["fingerprint"] != fingerprint:
            raise ValueError("it belongs to another model file")
        if header_sha256(path, int(body["header_len"])) != body["header_sha256"]:
            raise ValueError("the model file's header changed")
        cfg = ModelConfig(**body["config"])
        tokenizer = Tokenizer.from_cached(tokenizer_dir(root), body["tokenizer"])
        if tokenizer is None:
            raise ValueError("its tokenizer's cache file is missing or damaged")
        return cfg, dict(body["summary"]), tokenizer
    except Exception as exc:   # any malformed entry: parse the header instead
        log.warning("the cached header %s is unusable (%s); reading the model file's header", target, exc)
        target.unlink(missing_ok=True)
        return None
