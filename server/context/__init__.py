"""Context for one completion: a stable header of related code, the prefix and the suffix.

`build_context` is the one entry point the server calls per request. The
sources it draws on (`sources.py`) are plain functions a test can call one by
one; `budget.py` renders and fits them; `secrets.py` (one level up) redacts
every part before it is returned.

The header is a pure function of the document *without its cursor line* (and
of the other documents), so typing on a line leaves it byte-identical and the
engine's KV-cache for it is reused.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from keystroke.engine.api import ContextFile, approx_tokens
from keystroke.engine.languages import language_of_path

from ..secrets import find_secrets, is_env_file, redact_secrets, redact_spans
from .budget import comment_out, fit_header, render_header, render_key as _render_key, text_tokens, trim_prefix, \
    trim_suffix
from .parse import language_of
from .sources import display_name, imports_source, signatures_source, siblings_source, similar_source, stable_view
from .usages import cursor_targets, usages_source
from .types import ContextConfig, DocumentView, PromptParts, Snippet

__all__ = [
    "ContextConfig", "DocumentView", "PromptParts", "Snippet", "approx_tokens", "build_context",
    "imports_source", "signatures_source", "siblings_source", "similar_source", "stable_view",
    "usages_source",
]

_CHARS_PER_TOKEN_CAP = 32  # no tokenizer spends fewer tokens than this on a line's characters
log = logging.getLogger(__name__)
MEMO_SECONDS = 5.0  # workspace files read for the header and the note may change on disk: look again after this
_memo: dict[tuple, tuple[float, str, tuple[dict, ...]]] = {}


def _secret_language(language_id: str, path: Path | str | None) -> str:
    """A config file's suffix (.yaml, .env...) outweighs the editor's languageId."""
    by_path = language_of_path(path)
    return by_path.id if by_path is not None and by_path.config else language_id


def build_context(doc: DocumentView, offset: int, others: list[DocumentView], *,
                  config: ContextConfig = ContextConfig(),
                  count_tokens: Callable[[str], int] = approx_tokens,
                  workspace_root: Path | None = None) -> PromptParts:
    """The prompt parts for a completion at `offset` (a str index into doc.text).

    Header, prefix and suffix each fit their share of `config.budget_tokens`
    as counted by `count_tokens`; secrets are redacted in each part separately,
    so the prefix still ends exactly at the cursor.
    """
    text = doc.text
    offset = max(0, min(offset, len(text)))
    header_budget, prefix_budget, suffix_budget = config.budgets()
    note_budget = min(config.usages_tokens, header_budget // 2) if config.usages else 0
    lang = language_of(doc.language_id, doc.path)
    env_file = is_env_file(doc.path or doc.uri)
    secret_lang = _secret_language(doc.language_id, doc.path or doc.uri)

    # Prefix and suffix: scan a window around the cursor for secrets, redact each side apart, then trim.
    lo = text.rfind("\n", 0, max(0, offset - prefix_budget * _CHARS_PER_TOKEN_CAP)) + 1 if offset else 0
    hi_probe = text.find("\n", min(len(text), offset + suffix_budget * _CHARS_PER_TOKEN_CAP))
    hi = len(text) if hi_probe < 0 else hi_probe + 1
    spans = find_secrets(text[lo:hi], language_id=secret_lang, env_file=env_file)
    prefix_raw = redact_spans(text[lo:offset], spans)
    suffix_raw = redact_spans(text[offset:hi], spans, base=offset - lo)
    first_window_line = text.count("\n", 0, lo)
    cursor_line = first_window_line + prefix_raw.count("\n")
    prefix, first_rel = trim_prefix(prefix_raw, prefix_budget, count_tokens, config.snap_lines, first_window_line)
    suffix = trim_suffix(suffix_raw, suffix_budget, count_tokens, config.snap_lines, cursor_line)
    visible = range(first_window_line + first_rel, cursor_line + suffix.count("\n") + 1)

    # Header: a pure function of the stable view, so it is memoized across the keystrokes of one line.
    stable, line = stable_view(doc, offset)
    key = (stable.text, line, doc.uri, doc.language_id, doc.path, tuple((o.uri, o.text) for o in others),
           visible.start, visible.stop, config, count_tokens, workspace_root)
    (header, files), provenance = _memoized(key, lambda: _header(doc, stable, line, others, config,
                                                                 header_budget - note_budget, count_tokens,
                                                                 workspace_root, visible, lang))
    note = _usages_note(doc, offset, stable, others, prefix, config, note_budget, count_tokens, workspace_root,
                        lang, visible, provenance) if note_budget else ""
    provenance.append({"source": "prefix", "tokens": text_tokens(prefix, count_tokens), "items": prefix.count("\n") + 1,
                       "origins": [display_name(doc, workspace_root)]})
    provenance.append({"source": "suffix", "tokens": text_tokens(suffix, count_tokens) if suffix else 0,
                       "items": suffix.count("\n"), "origins": [display_name(doc, workspace_root)]})
    cut = prefix.rfind("\n") + 1
    return PromptParts(header, prefix[:cut] + note + prefix[cut:], suffix, provenance, note, files,
                       display_name(doc, workspace_root))


def _memoized(key: tuple, compute: Callable[[], tuple[Any, list[dict]]]) -> tuple[Any, list[dict]]:
    """`compute()`'s (value, provenance), reused for the same key during MEMO_SECONDS (the keystrokes of one line)."""
    now = time.monotonic()
    hit = _memo.get(key)
    if hit is None or now - hit[0] >= MEMO_SECONDS:
        text, provenance = compute()
        hit = _memo[key] = (now, text, tuple(provenance))
        while len(_memo) > 16:
            _memo.pop(next(iter(_memo)))
    return hit[1], [dict(e) for e in hit[2]]


def _usages_note(doc: DocumentView, offset: int, stable: DocumentView, others: list[DocumentView], prefix: str,
                 config: ContextConfig, budget: int, count_tokens: Callable[[str], int],
                 workspace_root: Path | None, lang: str, visible: range, provenance: list[dict]) -> str:
    """The usages note (`usages_source`) as comment lines to go above the cursor's line, redacted and fitted."""
    start = doc.text.rfind("\n", 0, offset) + 1
    targets = cursor_targets(doc.text[start:offset])
    if not targets:
        return ""

    def compute() -> tuple[str, list[dict]]:
        try:
            note = usages_source(doc, offset, others, config=config, workspace_root=workspace_root, visible=visible)
        except Exception as exc:  # like a failing source: no note, the completion goes on
            log.warning("context source usages failed for %s: %r", doc.uri, exc)
            return "", []
        cursor_line = prefix[prefix.rfind("\n") + 1:]
        indent = cursor_line[: len(cursor_line) - len(cursor_line.lstrip(" \t"))]
        lines = redact_secrets(note.text, language_id=_secret_language(doc.language_id, doc.path)).split("\n") \
            if note else []
        while lines:
            text = "".join(indent + line for line in comment_out("\n".join(lines), lang).splitlines(keepends=True))
            tokens = text_tokens(text, count_tokens)
            if tokens <= budget:
                return text, [{"source": "usages", "tokens": tokens, "items": len(lines), "origins": [note.origin]}]
            lines.pop()
        return "", []

    # A function of the document without its cursor line and of that line up to the call, like the header.
    key = ("usages", stable.text, doc.text[start:start + max(t.end for t in targets)], doc.uri, doc.language_id,
           doc.path, tuple((o.uri, o.text) for o in others), visible.start, visible.stop, config, budget,
           count_tokens, workspace_root)
    text, entries = _memoized(key, compute)
    provenance.extend(entries)
    return text


def _header(doc: DocumentView, stable: DocumentView, line: int, others: list[DocumentView],
            config: ContextConfig, budget: int, count_tokens: Callable[[str], int], workspace_root: Path | None,
            visible: range, lang: str) -> tuple[tuple[str, tuple[ContextFile, ...]], list[dict]]:
    """The header from every enabled source, redacted and fitted, as comments and as files; its provenance."""
    calls: dict[str, Callable[[], list[Snippet]]] = {
        "imports": lambda: imports_source(stable, line, visible),
        "signatures": lambda: signatures_source(stable, line, others, config=config,
                                                workspace_root=workspace_root, visible=visible),
        "siblings": lambda: siblings_source(stable, line, config=config, visible=visible),
        "similar": lambda: similar_source(stable, line, others, config=config, workspace_root=workspace_root),
    }
    snippets: list[Snippet] = []
    for name in config.enabled():
        try:
            snippets += calls[name]()
        except Exception as exc:  # a source that fails costs its context, never the completion
            log.warning("context source %s failed for %s: %r", name, doc.uri, exc)
    snippets = _dedupe(snippets)
    snippets = [replace(s, text=redact_secrets(s.text, language_id=_secret_language(s.language, None)))
                for s in snippets]
    path_line = f"file: {display_name(doc, workspace_root)}" if config.include_path else None
    header, chosen = fit_header(snippets, budget, count_tokens, lang, path_line, config.enabled(),
                                post=redact_secrets)
    provenance: list[dict] = []
    for source in config.enabled():
        items = [s for s in chosen if s.source == source]
        if items:
            provenance.append({
                "source": source,
                "items": len(items),
                "tokens": count_tokens(render_header(items, lang)),
                "origins": sorted({s.origin for s in items}),
            })
    provenance.append({"source": "header", "tokens": count_tokens(header) if header else 0,
                       "items": len(chosen), "origins": []})
    return (header, context_files(chosen, display_name(doc, workspace_root), redact_secrets)), provenance


def context_files(chosen: list[Snippet], this_path: str, post: Callable[[str], str]) -> tuple[ContextFile, ...]:
    """The header's snippets as files for a repository-format prompt: one per origin, in the header's order.

    The snippets are the ones `fit_header` chose for the comment header, so
    both forms hold the same context in about the same tokens. Snippets of
    the document itself ("this file": its imports and definitions out of
    view) form a block under the document's own path, before the rest.
    """
    by_origin: dict[str, list[str]] = {}
    for s in sorted(chosen, key=lambda s: (s.origin != "this file",) + _render_key(s)):
        by_origin.setdefault(this_path if s.origin == "this file" else s.origin, []).append(s.text)
    return tuple(ContextFile(path, post("\n".join(texts))) for path, texts in by_origin.items())


def _dedupe(snippets: list[Snippet]) -> list[Snippet]:
    """Keep the first offer of each block (sources come in priority order) and drop repeated texts."""
    seen_blocks: set[tuple[str, int]] = set()
    seen_texts: set[str] = set()
    out = []
    for s in snippets:
        block = (s.origin, s.line)
        if (s.line >= 0 and block in seen_blocks) or s.text in seen_texts:
            continue
        seen_blocks.add(block)
        seen_texts.add(s.text)
        out.append(s)
    return out
