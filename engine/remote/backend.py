"""`RemoteBackend`: the `Backend` protocol over HTTP (the package docstring says what it sends).

One request: learn the served model and FIM template once (`_prepare`), send
the prompt, read the stream until the stop rules fire (`_stream_once`), retry
connection errors with backoff, and answer from the local fallback, or with
an error, while the circuit breaker says the server is down.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
import re
from collections import deque
from dataclasses import replace
from typing import Callable

from .. import fim
from ..api import Backend, Candidate, CompletionRequest, CompletionResult, StopReason, Timings, approx_tokens
from ..stops import StopChecker, text_above
from .breaker import CircuitBreaker
from .http import Client, Endpoint, Rejected, RemoteError, Unreachable
from .prompt import hold_back_space, render_prompt
from .settings import FIM_CHOICES, RemoteSettings, template_for_server, text_template
from .stream import WATCH_INTERVAL_S, StreamRow, Watcher, error_text, pieces, read_usage

log = logging.getLogger("keystroke.engine.remote")

PROBE_TIMEOUT_S = 5.0
LATENCY_WINDOW = 200


class _Interrupted(Exception):
    """Cancelled (or out of time) before any text came; `reached`: the server had answered."""

    def __init__(self, reason: StopReason, reached: bool) -> None:
        self.reason = reason
        self.reached = reached


# How servers word a refusal of n > 1: llama.cpp "Field 'n': Value must be between 1 <= value <= 1", vLLM "n must be".
_REFUSES_N = re.compile(r"""['"`]n['"`]|\bn\s+(?:must|should|is)\b|\bn\s*[<>=]""")


class RemoteBackend:
    """The `Backend` protocol over HTTP. Build it with `backends.make_backend` or directly."""

    def __init__(self, settings: RemoteSettings, *, fallback: Callable[[], Backend] | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        if settings.fim not in FIM_CHOICES:
            raise ValueError(f"engine.fim must be one of {', '.join(FIM_CHOICES)}, not {settings.fim!r}")
        self.settings = settings
        self.endpoint = Endpoint.parse(settings.url)
        if not settings.verify_tls and self.endpoint.scheme == "https":
            log.warning("TLS verification is off for %s (engine.verifyTls is false): anyone on the network "
                        "path can read the prompts and the key", self.endpoint.display)
        if settings.api_key and self.endpoint.scheme == "http" and not _is_loopback(self.endpoint.host):
            log.warning("the API key is sent in clear text to %s: use https", self.endpoint.display)
        self.client = Client(self.endpoint, timeout_s=settings.timeout_ms / 1000, api_key=settings.api_key,
                             verify_tls=settings.verify_tls)
        self.breaker = CircuitBreaker(settings.failure_threshold, settings.cooldown_ms / 1000,
                                      max(60.0, settings.cooldown_ms / 1000), clock=clock)
        self._on_state_change: Callable[[str, str], None] | None = None  # (state, message) for the server
        self._sleep = sleep
        self._fallback_factory = fallback
        self._fallback: Backend | None = None
        self._fallback_error: str | None = None
        self._fallback_lock = threading.Lock()
        self._lock = threading.Lock()
        self._model: str | None = settings.model
        self._template: fim.FimTemplate | None = None
        self._fim_source: str | None = None      # how the template was chosen, once it has been
        self._one_choice = False                 # the server refused n > 1 once: ask one at a time
        self._counters = {"requests": 0, "remote_requests": 0, "failures": 0, "retries": 0,
                          "rejected": 0, "refused_while_down": 0, "cancelled": 0, "fallback_requests": 0,
                          "remote_prompt_tokens": 0, "remote_cached_tokens": 0, "decode_tokens": 0}
        self._first_token_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._total_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    # ------------------------------------------------------------- protocol
    def complete(self, req: CompletionRequest) -> CompletionResult:
        t0 = time.perf_counter()
        self._count("requests")
        if req.is_cancelled():
            self._count("cancelled")
            return CompletionResult([Candidate("", "cancelled")], Timings())
        if not self.breaker.allow():
            self._count("refused_while_down")
            return self._while_down(req, self.breaker.last_error or "it failed before")
        try:
            result = self._choices(req, t0)
        except Unreachable as err:
            self._count("failures")
            if self.breaker.failure(str(err)):
                self._announce("down", f"remote engine at {self.endpoint.display} is unreachable: {err}; "
                                       f"retrying in {self.breaker.cooldown_s:.0f} s")
            return self._while_down(req, str(err))
        except Rejected as err:
            self._count("rejected")
            self._reached()
            log.warning("remote engine at %s refused a request: %s", self.endpoint.display, err)
            return CompletionResult([], Timings(total_ms=_ms_since(t0)),
                                    error=f"remote engine at {self.endpoint.display} refused the request: {err}")
        except _Interrupted as stop:
            if stop.reached:
                self._reached()
            else:
                self.breaker.release()
            self._count("cancelled")
            return CompletionResult([Candidate("", stop.reason)], Timings(total_ms=_ms_since(t0)))
        self._reached()
        result.timings.total_ms = _ms_since(t0)
        with self._lock:
            self._total_ms.append(result.timings.total_ms)
            if any(c.stop_reason == "cancelled" for c in result.candidates):
                self._counters["cancelled"] += 1
        return result

    def info(self) -> dict:
        s = self.settings
        return {"backend": "remote", "url": self.endpoint.display, "model": self._model,
                "fim": "infill" if s.fim == "infill" else (self._template.name if self._template else None),
                "fim_setting": s.fim, "fim_source": self._fim_source, "state": self.breaker.state,
                "verify_tls": s.verify_tls, "api_key": bool(s.api_key), "cache_prompt": s.cache_prompt,
                "timeout_ms": s.timeout_ms, "fallback": self._fallback_factory is not None}

    def stats(self) -> dict:
        with self._lock:
            out: dict = dict(self._counters)
            first, total = list(self._first_token_ms), list(self._total_ms)
        b = self.breaker
        out.update(state=b.state, last_error=b.last_error, consecutive_failures=b.failures,
                   seconds_until_probe=round(b.seconds_until_probe(), 2), times_down=b.times_opened,
                   first_token_ms=_summary(first), total_ms=_summary(total))
        if self._fallback is not None:
            out["fallback"] = self._fallback.stats()
        return out

    def count_tokens(self, text: str) -> int:
        """An estimate: the served model's tokenizer is on the server."""
        return approx_tokens(text)

    def watch(self, on_state_change: Callable[[str, str], None]) -> None:
        self._on_state_change = on_state_change

    def clear_cache(self) -> None:
        if self._fallback is not None:
            self._fallback.clear_cache()

    def close_document(self, doc_id: str) -> None:
        if self._fallback is not None:
            self._fallback.close_document(doc_id)

    # -------------------------------------------------------------- requests
    def _choices(self, req: CompletionRequest, t0: float) -> CompletionResult:
        """All `req.n` candidates: in one request, or one request each where the server takes n = 1 only.

        llama.cpp's own server refuses n > 1 (HTTP 400, "Field 'n' ..."): that is
        learnt from the first refusal and kept, so later requests ask one at a time."""
        if req.n > 1 and (self._one_choice or self.settings.fim == "infill"):
            return self._one_at_a_time(req, t0)
        try:
            return self._with_retries(req, t0)
        except Rejected as err:
            if req.n <= 1 or not _REFUSES_N.search(str(err)):
                raise
            self._one_choice = True
            log.warning("remote engine at %s takes one completion per request (%s); asking for each of %d "
                        "candidates in turn from now on", self.endpoint.display, err, req.n)
            return self._one_at_a_time(req, t0)

    def _one_at_a_time(self, req: CompletionRequest, t0: float) -> CompletionResult:
        seed = req.sampling.seed
        results = []
        for i in range(req.n):
            if req.is_cancelled():
                break
            sampling = replace(req.sampling, seed=None if seed is None else seed + i)
            results.append(self._with_retries(replace(req, n=1, sampling=sampling), t0))
        candidates: list[Candidate] = []
        for r in results:
            candidates += [c for c in r.candidates if c.text not in {k.text for k in candidates}]
        timings = results[0].timings if results else Timings()
        timings.decode_tokens = sum(r.timings.decode_tokens for r in results)
        timings.decode_ms = sum(r.timings.decode_ms for r in results)
        return CompletionResult(candidates, timings)

    def _with_retries(self, req: CompletionRequest, t0: float) -> CompletionResult:
        delay = self.settings.backoff_ms / 1000
        for attempt in range(self.settings.retries + 1):
            try:
                self._prepare()
                return self._stream_once(req, t0)
            except Unreachable as err:
                out_of_time = req.stop.deadline_ms is not None and _ms_since(t0) + delay * 1000 >= req.stop.deadline_ms
                if attempt == self.settings.retries or out_of_time:
                    raise
                log.info("remote engine at %s: %s; retry %d in %.2f s", self.endpoint.display, err,
                         attempt + 1, delay)
                self._count("retries")
                self._wait(delay, req)
                delay *= 2
        raise AssertionError("unreachable")

    def _wait(self, seconds: float, req: CompletionRequest) -> None:
        """Sleep between retries, in steps, giving up early when the request is cancelled."""
        left = seconds
        while left > 0:
            if req.is_cancelled():
                raise _Interrupted("cancelled", reached=False)
            step = min(left, WATCH_INTERVAL_S * 5)
            self._sleep(step)
            left -= step

    def _request(self, req: CompletionRequest) -> tuple[str, dict]:
        s, p, st = self.settings, req.sampling, req.stop
        common: dict = {"temperature": p.temperature, "top_p": p.top_p, "stream": True,
                        # llama.cpp servers default to a 1.1 repeat penalty: send ours, always
                        "repeat_penalty": p.repetition_penalty}
        if p.seed is not None:
            common["seed"] = p.seed
        if p.top_k > 0:
            common["top_k"] = p.top_k
        if st.stop_strings:
            common["stop"] = [x for x in st.stop_strings if x]
        if s.cache_prompt:
            common["cache_prompt"] = True
        if s.fim == "infill":
            body = dict(common, input_prefix=req.header + req.prefix, input_suffix=req.suffix,
                        n_predict=st.max_tokens)
            return self.endpoint.root_path("infill"), body
        prefix, _ = hold_back_space(self._template, req.prefix)
        body = dict(common, prompt=render_prompt(self._template, req.header, prefix, req.suffix),
                    max_tokens=st.max_tokens, n=max(1, req.n), min_p=0.0)
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty   # vLLM's and TGI's name
        if self._model:
            body["model"] = self._model
        return self.endpoint.openai_path("completions"), body

    def _stream_once(self, req: CompletionRequest, t0: float) -> CompletionResult:
        path, body = self._request(req)
        self._count("remote_requests")
        timings = Timings()
        line = req.prefix.rsplit("\n", 1)[-1]
        held = "" if self.settings.fim == "infill" else hold_back_space(self._template, req.prefix)[1]
        rows: dict[int, StreamRow] = {}
        deadline = t0 + req.stop.deadline_ms / 1000 if req.stop.deadline_ms else None
        sent_stops = bool(body.get("stop"))
        stream = self.client.stream(path, body)
        watch = Watcher(stream, req.is_cancelled, deadline)
        first: float | None = None
        try:
            for event in stream:
                if watch.reason:
                    break
                if "error" in event:
                    raise Rejected(f"the server reported: {error_text(event['error'])}")
                for index, piece, finish in pieces(event):
                    row = rows.get(index)
                    if row is None:
                        row = rows[index] = StreamRow(StopChecker(req.stop, line, req.suffix, text_above(req.prefix)), held)
                    if piece and first is None and row.reason is None:
                        first = time.perf_counter()
                    row.add(piece, finish, sent_stops, req.stop.max_tokens)
                read_usage(event, timings)
                if rows and all(r.reason is not None for r in rows.values()):
                    break       # every candidate is done: close now, whatever the server would add
                if req.is_cancelled():
                    watch.reason = "cancelled"
                    break
                if deadline is not None and time.perf_counter() >= deadline:
                    watch.reason = "deadline"
                    break
        finally:
            watch.stop()
            stream.close()
        end = time.perf_counter()
        if watch.reason and not rows:
            raise _Interrupted(watch.reason, reached=True)
        candidates: list[Candidate] = []
        seen: set[str] = set()
        for index in sorted(rows):
            row = rows[index]
            reason = row.reason or watch.reason or "eos"   # a stream that just ended: the model stopped
            text = row.final_text
            if text in seen:
                continue
            seen.add(text)
            candidates.append(Candidate(text, reason, row.chunks))
        timings.decode_tokens = timings.decode_tokens or sum(r.chunks for r in rows.values())
        timings.prefill_ms = ((first or end) - t0) * 1000
        timings.decode_ms = (end - first) * 1000 if first else 0.0
        with self._lock:
            if first is not None:
                self._first_token_ms.append(timings.prefill_ms)
            self._counters["decode_tokens"] += timings.decode_tokens
            self._counters["remote_prompt_tokens"] += timings.prompt_tokens
            self._counters["remote_cached_tokens"] += timings.reused_memory_tokens
        return CompletionResult(candidates, timings)

    # ------------------------------------------------------- model and FIM
    def _prepare(self) -> None:
        """Learn the served model's name and the FIM template, once (needs the server up)."""
        if self._fim_source is not None:
            return
        if self._model is None and self.settings.fim != "infill":
            try:
                listing = self.client.get_json(self.endpoint.openai_path("models"), PROBE_TIMEOUT_S)
                data = listing.get("data") if isinstance(listing, dict) else None
                if data and isinstance(data[0], dict) and data[0].get("id"):
                    self._model = str(data[0]["id"])
            except Rejected:
                pass        # no model list: send no model name, servers with one model accept that
        choice = self.settings.fim
        if choice == "infill":
            self._template, source = None, "infill"
        elif choice == "none":
            self._template, source = None, "setting"
        elif choice != "auto":
            self._template, source = text_template(choice), "setting"
        else:
            self._template, source = template_for_server(self._tokenizer_probe(), self._model)
        self._fim_source = source
        log.info("remote engine at %s: model %s, prompt template %s (%s)", self.endpoint.display,
                 self._model or "(server default)", self._template.name if self._template else "plain", source)

    def _tokenizer_probe(self) -> Callable[[str], list] | None:
        """A function text -> token list through whichever tokenize endpoint the server has."""
        model = {"model": self._model} if self._model else {}
        candidates = (
            (self.endpoint.root_path("tokenize"), lambda s: {"content": s}),                 # llama-server
            (self.endpoint.root_path("tokenize"), lambda s: dict(model, prompt=s)),          # vLLM
            (self.endpoint.root_path("extras/tokenize"), lambda s: dict(model, input=s)),    # llama-cpp-python
        )
        for path, make in candidates:
            def call(text: str, path: str = path, make: Callable = make) -> list:
                answer = self.client.post_json(path, make(text), PROBE_TIMEOUT_S)
                tokens = answer.get("tokens") if isinstance(answer, dict) else None
                if not isinstance(tokens, list):
                    raise Rejected(f"{path} gave no token list")
                return tokens
            try:
                call("x")
                return call
            except RemoteError as err:
                if isinstance(err, Unreachable) and not err.status:
                    raise       # the server is gone, not just lacking this endpoint
                continue
        return None

    # ------------------------------------------------------------ down / up
    def _reached(self) -> None:
        if self.breaker.success():
            self._announce("up", f"remote engine at {self.endpoint.display} is reachable again")

    def _announce(self, state: str, message: str) -> None:
        (log.warning if state == "down" else log.info)("%s", message)
        if self._on_state_change is not None:
            try:
                self._on_state_change(state, message)
            except Exception:  # noqa: BLE001 - a listener must not break completions
                log.exception("remote state listener failed")

    def _while_down(self, req: CompletionRequest, why: str) -> CompletionResult:
        message = f"remote engine at {self.endpoint.display} is unreachable: {why}"
        local = self._local()
        if local is None:
            if self._fallback_error:
                message += f"; the local fallback could not load: {self._fallback_error}"
            return CompletionResult([], Timings(), error=message)
        self._count("fallback_requests")
        return local.complete(req)

    def _local(self) -> Backend | None:
        if self._fallback_factory is None or self._fallback_error is not None:
            return self._fallback
        with self._fallback_lock:
            if self._fallback is None and self._fallback_error is None:
                try:
                    log.info("loading the local fallback engine while %s is down", self.endpoint.display)
                    self._fallback = self._fallback_factory()
                except Exception as err:  # noqa: BLE001 - reported with the remote's error
                    self._fallback_error = str(err) or type(err).__name__
                    log.warning("the local fallback engine could not load: %s", self._fallback_error)
        return self._fallback

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1


def _summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(values), "p50": round(statistics.median(ordered), 1),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "mean": round(sum(ordered) / len(ordered), 1)}


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
