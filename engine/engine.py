"""The local engine: a loaded model plus its per-document KV-cache.

`Engine.complete` is the whole path of one request: response cache, prompt template and token healing, longest cached prefix
from the KV store, prefill of only the new tokens, generation, and storing
the cache back. It implements the `Backend` protocol of `api.py`.
"""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import torch

from . import fim, healing, native
from .api import Candidate, CompletionRequest, CompletionResult, Timings
from .cache.kvstore import KVStore
from .cache.responses import ResponseCache, make_key
from .errors import KeystrokeError
from .generate import Generated, generate
from .names import missing_line
from .stops import text_above
from .loading.loader import fingerprint, load_checkpoint, release_freed_memory
from .loading.registry import DEFAULT_MODEL, resolve
from .model import Transformer
from .paths import cache_root
from .loading import packed
from .quantize import Packer, kernels, pick_quant, row_exact
from .threads import ThreadBudget

log = logging.getLogger("keystroke.engine")

PROMPT_FORMAT_VERSION = 2  # 2: the cursor's line after <|fim_middle|>, repository format
PREFILL_CHUNK = 256
# When a prompt is longer than the limit its start is cut, in steps of this
# many tokens, so that the cut point (and with it the cache) moves rarely.
TRUNCATE_STEP = 512
# Tokens a greedy decode step may guess from the text itself (lookup.py); int8 only, where checking
# a guess computes every row bit for bit as a one-token step does (quantize.Int8Linear._step_rows).
DRAFT_TOKENS = 4


_frozen = False   # freeze_imports ran in this process


def freeze_imports() -> None:
    """Move every object alive now (torch's and the other imports', ~170k) out of the collector's view.

    They live as long as the process, yet each full collection, which Python
    runs now and then as containers are made, walks them all: measured 200 ms
    per full collection after loading Qwen 0.5B, and a first request that
    builds the 152k-262k token texts of healing's index (healing.VocabIndex)
    ran 1.1 -> 0.7 s (Qwen) and 2.0 -> 1.0-1.5 s (Gemma) with them frozen.
    Done once per process, before the first model is built, so a model loaded
    later (a settings change) stays collectable.
    """
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


def _progress(name: str, cached: bool):
    """A reporter for the first conversion of a model's weights (stderr: the server's stdout is LSP)."""
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(1, total)
        if pct // 10 != state["last"] // 10 or done == total:
            state["last"] = pct
            later = " (cached for the next start)" if cached else ""
            print(f"keystroke: converting {name} to int8: {pct}%{later}", file=sys.stderr, flush=True)
    return report


TRIM_AFTER_TOKENS = 256   # computed tokens after which a request hands freed memory back


class Engine:
    def __init__(self, model: Transformer, tokenizer, *, name: str, path: Path, fingerprint: str,
                 quant: str, device: torch.device, info: dict, store: KVStore,
                 responses: ResponseCache, max_prompt_tokens: int = 4096, keep_generated: bool = True,
                 response_cache: bool = True) -> None:
        self.model = model
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.fingerprint = fingerprint
        self.quant = quant
        self.device = device
        self.checkpoint_info = info
        self.store = store
        self.responses = responses
        self.max_prompt_tokens = min(max_prompt_tokens, self.cfg.max_seq_len)
        # On a CPU, a request runs on fewer threads while other processes keep cores busy (threads.py).
        self._threads = ThreadBudget(torch.get_num_threads() if device.type == "cpu" else 1)
        # Generated tokens' K/V are kept for the next request only where decode steps compute
        # them exactly as a prefill would (int8 only with the C kernels: see model.py's docstring).
        self.keep_generated = keep_generated
        self.template = fim.detect_template(tokenizer)
        self.draft_tokens = DRAFT_TOKENS if quant == "int8" and device.type == "cpu" else 0
        self._response_cache = response_cache
        self._lock = threading.Lock()
        self._counters = {"requests": 0, "response_cache_hits": 0,
                          "computed_tokens": 0, "reused_memory_tokens": 0, "reused_disk_tokens": 0,
                          "decode_tokens": 0, "decode_passes": 0, "prefill_ms": 0.0, "decode_ms": 0.0}

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, model: str | Path | None = None, *, quant: str = "auto", threads: int | None = None,
             device: str = "cpu", cache_dir: Path | None = None, memory_budget_mb: int = 1024,
             disk_budget_mb: int = 4096, persist: bool = True, max_prompt_tokens: int = 4096,
             response_cache: bool = True, weights_cache: bool = True) -> "Engine":
        """Load a registered model name, a .gguf file or a Hugging Face folder.

        `response_cache=False` makes every request run the model (tests of the KV path).
        `persist` is about documents (the KV-cache and responses on disk); the int8
        weights are cached under `packed/` unless `weights_cache=False`, like built
        tokenizers, because they depend only on the model file.
        """
        freeze_imports()
        if threads:
            torch.set_num_threads(int(threads))
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise KeystrokeError("device 'cuda' was asked for but torch sees no GPU", "use device 'cpu'")
        quant = pick_quant(quant, dev)
        name = str(model or DEFAULT_MODEL)
        path = resolve(name)
        t0 = time.perf_counter()
        root = Path(cache_dir) if cache_dir else cache_root()
        check, gguf_fp = None, None
        if quant == "int8" and dev.type == "cpu" and weights_cache and Path(path).is_file():
            # The packed weights' checksum runs beside the tokenizer's build (packed.FileCheck): started first.
            gguf_fp = fingerprint([Path(path)])
            check = packed.FileCheck(packed.cache_path(root, gguf_fp, quant))
        ckpt = load_checkpoint(path, root, gguf_fp)   # the header and tokenizer; a GGUF's tensors are read on demand
        release_freed_memory()         # before the weights arrive: the peak is then one of the two, not both
        try:
            net = cls._build(ckpt, quant, dev, root if weights_cache else None, name, check)
        finally:
            close = getattr(ckpt.weights, "close", None)
            if close is not None:
                close()               # drop the file (and anything not consumed)
            ckpt.weights = {}
        net.phase.row_exact = row_exact(quant, dev)
        fp = f"{ckpt.fingerprint}:{kernels(quant, dev)}:{dev.type}"
        if dev.type == "cpu" and native.step_ops():   # decode steps' norms and attention in C: their own bits
            fp += f":{native.step_ops()}"
        # K/V go to disk as fp32: fp16 changed Gemma's greedy output after a restore
        # (beyond a near-tie) in tests/engine/test_cache_equivalence_real.py.
        store = KVStore(fp, ckpt.cfg, memory_budget_mb=memory_budget_mb,
                        disk_dir=(root / "kv") if persist else None, disk_budget_mb=disk_budget_mb,
                        format_version=PROMPT_FORMAT_VERSION, kv_dtype_on_disk=torch.float32)
        responses = ResponseCache((root / "responses") if persist else None)
        release_freed_memory()
        info = dict(ckpt.info, load_s=round(time.perf_counter() - t0, 2))
        log.info("loaded %s (%s, %s) in %.1fs", name, ckpt.cfg.family, quant, info["load_s"])
        return cls(net, ckpt.tokenizer, name=name, path=path, fingerprint=fp, quant=quant, device=dev,
                   info=info, store=store, responses=responses, max_prompt_tokens=max_prompt_tokens,
                   keep_generated=not net.exact_attention or net.phase.row_exact,
                   response_cache=response_cache)

    @staticmethod
    def _build(ckpt, quant: str, dev: torch.device, root: Path | None, name: str,
               check: "packed.FileCheck | None" = None) -> Transformer:
        """The model in its run format: mapped from the packed cache, or converted (and cached) once."""
        if dev.type == "cuda":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(quant, torch.float32)
            net = Transformer.from_weights(ckpt.cfg, ckpt.weights, dtype=dtype).to(dev)
            net.act_dtype = dtype
            return net
        if quant == "bf16":
            net = Transformer.from_weights(ckpt.cfg, ckpt.weights, dtype=torch.bfloat16)
            net.act_dtype = torch.bfloat16
            return net
        if quant == "fp32":
            return Transformer.from_weights(ckpt.cfg, ckpt.weights)
        if quant == "fp16":
            return Transformer.from_weights(ckpt.cfg, ckpt.weights, packer=Packer("fp16"))
        key = packed.cache_key(ckpt.fingerprint, quant)
        where = packed.cache_path(root, ckpt.fingerprint, quant) if root is not None else None
        net = packed.load(where, key, ckpt.cfg, check) if where is not None else None
        if net is None:
            if hasattr(ckpt.weights, "progress"):
                ckpt.weights.progress = _progress(name, where is not None)
            net = Transformer.from_weights(ckpt.cfg, ckpt.weights, packer=Packer(quant))
            if where is not None:
                packed.save(net, where, key)
        net.exact_attention = True   # int8 activations: see model.exact_attention
        return net

    # ------------------------------------------------------------- completion
    def complete(self, req: CompletionRequest) -> CompletionResult:
        t_start = time.perf_counter()
        with self._lock:  # one model, one request at a time
            queue_ms = (time.perf_counter() - t_start) * 1000
            started = time.monotonic() - queue_ms / 1000   # a deadline counts from the request, queue included
            threads = self._threads.pick()
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            with torch.inference_mode():
                result = self._complete(req, started)
            result.timings.queue_ms = queue_ms
            result.timings.total_ms = (time.perf_counter() - t_start) * 1000
            if result.timings.computed_tokens >= TRIM_AFTER_TOKENS:
                # A long prefill's activations are freed to glibc, which keeps them: 26 MB of Gemma 3's
                # RSS after a 575-token request, handed back in 4 ms (9 ms after 679 tokens).
                release_freed_memory()
        self._count(result.timings)
        return result

    def _complete(self, req: CompletionRequest, started: float) -> CompletionResult:
        """One completion; at a blank Python line between code that tells what is missing there (the
        definition of a name the code below reads, or a block's header: `names.missing_line`) and
        where the first answer is not that, the answer with the start of it typed, if that one is.

        A second request is the first one with text typed on the line, so it shares the
        prompt's K/V up to the line (the FIM layout puts typed text after the suffix): a few
        tokens of prefill and a line of decode. It is a pure function of the document and cursor,
        like the first: a warm cache still completes as a cold one."""
        result = self._complete_once(req, started)
        if req.n > 1 or not result.candidates or result.candidates[0].stop_reason in ("cancelled", "deadline"):
            return result
        missing = missing_line(req.prefix, req.suffix, req.stop.language_id)
        line = req.prefix.rsplit("\n", 1)[-1]
        typings = missing.typings()
        if not typings or missing.fits((line + result.text).split("\n", 1)[0]):
            return result
        timings = result.timings
        for typed in typings:
            on_text = req.on_text
            sub = replace(req, prefix=req.prefix + typed,
                          on_text=(lambda text, typed=typed: on_text(typed + text)) if on_text is not None else None)
            again = self._complete_once(sub, started)
            _add_timings(timings, again.timings)
            text = typed + again.text
            if again.candidates and missing.fits((line + text).split("\n", 1)[0]):
                return CompletionResult([replace(again.candidates[0], text=text)], timings)
            if again.candidates and again.candidates[0].stop_reason in ("cancelled", "deadline"):
                break
        return result

    def _complete_once(self, req: CompletionRequest, started: float) -> CompletionResult:
        timings = Timings()
        prompt = fim.build_prompt(self.tokenizer, self.template, req.header, req.prefix, req.suffix,
                                  files=[(f.path, f.text) for f in req.files], path=req.path)
        ids = self._fit(list(prompt.ids), prompt.protected)
        plan = healing.heal(self.tokenizer, ids, prompt.protected)
        ids = list(plan.ids)
        timings.prompt_tokens = len(ids)
        if not ids:  # an empty document with a tokenizer that adds no BOS: nothing to condition on
            return CompletionResult([], timings)

        key = make_key(self.fingerprint, ids, req.sampling, req.stop, req.n,
                       extra=plan.removed_text) if req.use_cache and self._response_cache else None
        if key is not None:
            hit = self.responses.get(key)
            if hit is not None:
                timings.response_cache_hit = True
                return CompletionResult([Candidate(c.text, "cached", c.tokens) for c in hit], timings)

        t0 = time.perf_counter()
        if req.use_cache:
            lease = self.store.acquire(req.doc_id, ids, max_reuse=len(ids) - 1)
            cache, reused, source = lease.cache, lease.reused, lease.source
        else:
            cache, reused, source = self.model.new_cache(capacity=len(ids) + 64), 0, None
        outs = []
        try:
            if source == "disk":
                timings.reused_disk_tokens = reused
            else:
                timings.reused_memory_tokens = reused
            logits = None
            for s, e in self._chunks(reused, len(ids)):
                chunk = torch.tensor([ids[s:e]], dtype=torch.long, device=self.device)
                logits = self.model(chunk, cache, stop=req.is_cancelled)
                if logits is None:
                    break   # cancelled within this chunk: the chunks before it stay cached
            timings.computed_tokens = cache.length - reused
            timings.prefill_ms = (time.perf_counter() - t0) * 1000
            if logits is None:
                return CompletionResult([Candidate("", "cancelled")], timings)

            t1 = time.perf_counter()
            deadline = started + req.stop.deadline_ms / 1000 if req.stop.deadline_ms else None
            line = req.prefix.rsplit("\n", 1)[-1]
            def run(avoid_first: int | None = None) -> list[Generated]:
                return generate(self.model, cache, logits, self.tokenizer, sampling=req.sampling, stop=req.stop,
                                n=max(1, req.n), is_cancelled=req.is_cancelled, heal=plan,
                                line_before_cursor=line, deadline=deadline, prompt_ids=ids, suffix=req.suffix,
                                on_text=req.on_text, avoid_first=avoid_first, draft=self.draft_tokens,
                                above=text_above(req.prefix))
            outs = run()
            if (again := self._retyped_suffix(outs)) is not None:
                # The model's first choice was the code below the cursor, which the stop rule cut to
                # nothing: ask once more from the prompt, without that choice's first token.
                first_try = sum(len(o.ids) for o in outs)
                timings.decode_passes += outs[0].passes
                cache.truncate(len(ids))
                outs = run(avoid_first=again)
                timings.decode_tokens += first_try
            timings.decode_ms = (time.perf_counter() - t1) * 1000
            timings.decode_tokens += sum(len(o.ids) for o in outs)
            timings.decode_passes += outs[0].passes if outs else 0
        finally:
            if req.use_cache:
                # Whatever happened, hand the document's cache back holding what it really holds.
                kept = ids[: min(cache.length, len(ids))]
                if self.keep_generated and req.n <= 1 and outs and cache.length > len(ids):
                    kept = ids + list(outs[0].ids)[: cache.length - len(ids)]
                cache.truncate(len(kept))
                self.store.release(req.doc_id, kept, cache)
        candidates = [Candidate(o.text, o.stop_reason, len(o.ids)) for o in outs]
        cancelled = any(c.stop_reason == "cancelled" for c in candidates)
        if key is not None and not cancelled and not any(c.stop_reason == "deadline" for c in candidates):
            self.responses.put(key, candidates)
        return CompletionResult(candidates, timings)

    def _retyped_suffix(self, outs: list[Generated]) -> int | None:
        """The first content token of a lone candidate that the suffix rules cut to nothing, else None.

        At a blank line the model often writes the next line of the code below instead of the
        missing one: 6 of 8 empty suggestions looked at in HumanEval single-line infilling. The
        same holds for code the suffix cannot follow and a block header left without a body
        (engine/stops.py)."""
        if len(outs) != 1 or outs[0].stop_reason != "suffix" or outs[0].text.strip():
            return None
        return next((i for i in outs[0].ids if self.tokenizer.decode([i]).strip()), None)

    @staticmethod
    def _chunks(start: int, end: int) -> list[tuple[int, int]]:
        """Prefill spans of at most PREFILL_CHUNK tokens. Any split gives the same K/V: with int8 the
        kernels are chunk-invariant (quantize.py, model.exact_attention); fp32 differs in the last bits."""
        edges = list(range(start, end, PREFILL_CHUNK)) + [end]
        return [(a, z) for a, z in zip(edges, edges[1:]) if z > a]

    def _fit(self, ids: list[int], protected: int) -> list[int]:
        """Cut the start of an over-long prompt (after its protected head) in coarse steps."""
        limit = self.max_prompt_tokens - min(256, self.max_prompt_tokens // 4)  # room to generate
        if len(ids) <= limit:
            return ids
        step = max(1, min(TRUNCATE_STEP, limit // 2))
        head = ids[:protected] if protected < limit // 2 else ids[:1]
        excess = len(ids) - limit
        cut = -(-excess // step) * step
        return head + ids[len(head) + cut:]

    # ------------------------------------------------------------- management
    def _count(self, t: Timings) -> None:
        c = self._counters
        c["requests"] += 1
        c["response_cache_hits"] += int(t.response_cache_hit)
        c["computed_tokens"] += t.computed_tokens
        c["reused_memory_tokens"] += t.reused_memory_tokens
        c["reused_disk_tokens"] += t.reused_disk_tokens
        c["decode_tokens"] += t.decode_tokens
        c["decode_passes"] += t.decode_passes
        c["prefill_ms"] += t.prefill_ms
        c["decode_ms"] += t.decode_ms

    def info(self) -> dict:
        return {"backend": "local", "model": self.name, "path": str(self.path), "family": self.cfg.family,
                "device": str(self.device), "quant": self.quant, "threads": torch.get_num_threads(),
                "most_threads": self._threads.most, "other_processes_busy_cores": self._threads.others_busy,
                "fim": self.template.name if self.template else None, **self.checkpoint_info,
                **({"int8_kernels": native.status()} if self.quant == "int8" else {})}

    def stats(self) -> dict:
        c = dict(self._counters)
        seen = c["computed_tokens"] + c["reused_memory_tokens"] + c["reused_disk_tokens"]
        c["reuse_ratio"] = round((seen - c["computed_tokens"]) / seen, 4) if seen else 0.0
        c["kv"] = self.store.stats()
        c["responses"] = self.responses.stats()
        return c

    def count_tokens(self, text: str) -> int:
        """How many of this model's tokens `text` is (the context budget counts with it)."""
        return len(self.tokenizer.encode(text))

    def watch(self, on_state_change: Callable[[str, str], None]) -> None:
        """A local engine is never down: nothing to report."""

    def clear_cache(self) -> None:
        with self._lock:
            self.store.clear()
            self.responses.clear()

    def close_document(self, doc_id: str) -> None:
        with self._lock:
            self.store.close(doc_id)


def _add_timings(into: Timings, more: Timings) -> None:
    """Add the tokens and milliseconds of a further model run of the same request to `into`."""
    for f in fields(Timings):
        if f.name in ("queue_ms", "total_ms", "prompt_tokens", "response_cache_hit"):
            continue
        setattr(into, f.name, getattr(into, f.name) + getattr(more, f.name))
