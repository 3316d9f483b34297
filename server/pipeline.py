"""One completion request, from a document and a cursor to suggestions.

This is the only place where context, mode choice, the engine request and
post-processing meet. The LSP handlers, `keystroke complete` and every script
in scripts/ go through it, so what is measured is what users get:

- `plan(doc, cursor, others, config)` -> `Plan`: the prompt parts from the
  context sources, the stop mode, and the engine's `CompletionRequest`;
- `finish(result, plan)` -> the post-processed, distinct suggestions;
- `plan_action` / `finish_action`: the same two steps for a code action;
- `TypedThrough`: the rest of the last suggestion when the user typed a
  prefix of it, answered before any of the above runs;
- `complete(backend, ...)`: all of it in one call, for scripts and the CLI.

Everything here is plain and synchronous: scheduling, cancellation and LSP
types belong to the server.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from keystroke.engine.api import Backend, CompletionRequest, CompletionResult, SamplingParams, StopPolicy

from . import action_edits, actions
from .config import Config
from .context import ContextConfig, DocumentView, approx_tokens, build_context
from .postprocess import dedupe, postprocess
from .syntax import choose_mode

CountTokens = Callable[[str], int]
# Several distinct suggestions cannot come from greedy decoding: with a
# configured temperature of 0 they are sampled at this one.
CANDIDATES_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Plan:
    """What to ask the engine for one cursor, and what `finish` needs to read the answer."""

    request: CompletionRequest
    mode: str
    text: str                   # the document's text (with a selected completion applied, if any)
    offset: int                 # the cursor in `text`
    language_id: str
    provenance: list[dict] = field(default_factory=list)
    header_tokens: int = 0


def context_config(config: Config, sources: ContextConfig | None = None) -> ContextConfig:
    """The context settings of `config`; `sources` (evaluations) overrides which sources are on."""
    base = sources if sources is not None else ContextConfig()
    return replace(base, budget_tokens=config.context_budget)


def sampling(config: Config, n: int) -> SamplingParams:
    """One suggestion: the configured temperature (greedy by default); several: sampled."""
    temperature = config.temperature if (n == 1 or config.temperature > 0) else CANDIDATES_TEMPERATURE
    return SamplingParams(temperature=temperature, top_p=0.95 if temperature > 0 else 1.0)


def stop_mode(doc: DocumentView, cursor: int) -> str:
    """The stop mode for a cursor, from its syntactic situation (line, block or free)."""
    return choose_mode(doc.text[:cursor], doc.text[cursor:], doc.language_id)


def plan(doc: DocumentView, cursor: int, others: list[DocumentView], config: Config, *, n: int = 1,
         count_tokens: CountTokens = approx_tokens, workspace_root: Path | None = None,
         sources: ContextConfig | None = None, mode: str | None = None,
         is_cancelled: Callable[[], bool] = lambda: False,
         on_text: Callable[[str], None] | None = None) -> Plan:
    """The engine request for a cursor at `cursor` of `doc`.

    `mode` forces the stop mode (an evaluation of whole bodies); by default
    it is chosen from the cursor's syntactic situation. `on_text` follows
    the generation as it goes (server/inflight.py).
    """
    parts = build_context(doc, cursor, others, config=context_config(config, sources),
                          count_tokens=count_tokens, workspace_root=workspace_root)
    chosen = mode or stop_mode(doc, cursor)
    request = CompletionRequest(doc_id=doc.uri, prefix=parts.prefix, suffix=parts.suffix, header=parts.header,
                                files=parts.files, path=parts.path,
                                sampling=sampling(config, n),
                                stop=StopPolicy(max_tokens=config.max_tokens, mode=chosen, language_id=doc.language_id),
                                n=n,
                                is_cancelled=is_cancelled, on_text=on_text if n == 1 else None)
    header_tokens = next((e["tokens"] for e in parts.provenance if e["source"] == "header"), 0)
    return Plan(request, chosen, doc.text, cursor, doc.language_id, parts.provenance, header_tokens)


def finish(result: CompletionResult, plan: Plan) -> list[str]:
    """The engine's candidates, post-processed; distinct, non-blank, in order."""
    prefix, suffix = plan.text[:plan.offset], plan.text[plan.offset:]
    return dedupe([postprocess(c.text, prefix=prefix, suffix=suffix, mode=plan.mode, language_id=plan.language_id)
                   for c in result.candidates])


def plan_action(spec: actions.ActionSpec, doc: DocumentView, config: Config, *,
                count_tokens: CountTokens = approx_tokens, workspace_root: Path | None = None,
                is_cancelled: Callable[[], bool] = lambda: False) -> CompletionRequest:
    """The engine request for a code action: the action's own prompt and stops, the document's context header."""
    prefix, suffix, stop = action_edits.action_request(spec, doc.text)
    header = build_context(doc, spec.start, [], config=context_config(config), count_tokens=count_tokens,
                           workspace_root=workspace_root).header
    return CompletionRequest(doc_id=doc.uri, prefix=prefix, suffix=suffix, header=header,
                             sampling=SamplingParams(temperature=config.temperature), stop=stop, n=1,
                             is_cancelled=is_cancelled)


def finish_action(result: CompletionResult, spec: actions.ActionSpec, text: str) -> actions.ActionEdit | None:
    """The edit the model's answer makes for `spec`, or None when it gave none."""
    if result.error or not result.candidates:
        return None
    return action_edits.apply_action(spec, text, result.text)


@dataclass(frozen=True)
class _Shown:
    before: str       # the document's text before the cursor when the suggestions were made
    after: str        # and after it
    texts: tuple[str, ...]


class TypedThrough:
    """The suggestions last shown for each document, to answer typing-through.

    When the user has typed a prefix of what was suggested (and nothing else
    changed), the rest of the suggestion is the answer: no context, no
    queue, no model. Works the same for every backend. Thread-safe.
    """

    def __init__(self) -> None:
        self._shown: dict[str, _Shown] = {}
        self._lock = threading.Lock()

    def remember(self, uri: str, text: str, offset: int, suggestions: list[str]) -> None:
        texts = tuple(t for t in suggestions if t)
        with self._lock:
            if texts:
                self._shown[uri] = _Shown(text[:offset], text[offset:], texts)
            else:
                self._shown.pop(uri, None)

    def rest(self, uri: str, text: str, offset: int, n: int = 1) -> list[str] | None:
        """What is left of the last suggestions after what was typed since, or None."""
        with self._lock:
            shown = self._shown.get(uri)
        if shown is None or text[offset:] != shown.after or not text.startswith(shown.before, 0, offset) \
                or offset <= len(shown.before):
            return None
        typed = text[len(shown.before):offset]
        rests = [t[len(typed):] for t in shown.texts if t.startswith(typed) and len(t) > len(typed)]
        return rests[:max(1, n)] or None

    def forget(self, uri: str | None = None) -> None:
        with self._lock:
            if uri is None:
                self._shown.clear()
            else:
                self._shown.pop(uri, None)


@dataclass
class Completed:
    """One request through the whole pipeline: its plan (None when typed through), the engine's answer, the suggestions."""

    plan: Plan | None
    result: CompletionResult | None
    suggestions: list[str]
    typed_through: bool = False


def complete(backend: Backend, doc: DocumentView, cursor: int, others: list[DocumentView], config: Config, *,
             n: int = 1, workspace_root: Path | None = None, sources: ContextConfig | None = None,
             mode: str | None = None, typed: TypedThrough | None = None) -> Completed:
    """What the server answers for this cursor, in one synchronous call (no debounce, no queue)."""
    if typed is not None:
        rest = typed.rest(doc.uri, doc.text, cursor, n)
        if rest is not None:
            return Completed(None, None, rest, typed_through=True)
    p = plan(doc, cursor, others, config, n=n, count_tokens=backend.count_tokens, workspace_root=workspace_root,
             sources=sources, mode=mode)
    result = backend.complete(p.request)
    suggestions = [] if result.error else finish(result, p)
    if typed is not None:
        typed.remember(doc.uri, doc.text, cursor, suggestions)
    return Completed(p, result, suggestions)
