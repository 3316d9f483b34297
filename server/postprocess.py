"""Shape a raw model continuation into a suggestion that fits the document.

The engine writes text after the cursor without knowing what the editor
already holds after it; these rules cut that text so that accepting it
leaves a sensible document:

1. mode: line mode keeps one line; block mode keeps lines until one is
   indented below the line the suggestion starts on;
2. lines that repeat the document's following lines are cut;
3. brackets: text that duplicates the rest of the cursor's line (a ')' the
   editor auto-inserted) is trimmed, and no suggestion may leave more
   closing brackets than the document had;
4. trailing whitespace goes, and an empty or blank suggestion becomes ''.
"""
from __future__ import annotations

import re

from .syntax import ScanState, indent_width, scan, scan_tail

# How much of the suffix the bracket check reads: enough for the enclosing
# statement, small enough to stay cheap on every keystroke.
SUFFIX_WINDOW = 2000
# How many of the document's following lines the repetition check compares.
FOLLOWING_LINES = 40

_CLOSER_LINE = re.compile(r"[)\]}]+[;,]?")


def _line_parts(prefix: str, suffix: str) -> tuple[str, str]:
    """The cursor's line, split at the cursor."""
    nl = suffix.find("\n")
    return prefix[prefix.rfind("\n") + 1:], suffix if nl == -1 else suffix[:nl]


def _first_line(text: str, line_suffix: str) -> str:
    """Line mode: the first line; if that is empty at the end of a line, the next one.

    A model at the end of a finished line often starts with a newline; then
    the suggestion is the next line (with the newlines before it), which is
    what the editor shows as ghost text below the cursor.
    """
    lines = text.split("\n")
    if lines[0].strip() or line_suffix.strip():
        return lines[0]
    for i, line in enumerate(lines[1:], 1):
        if line.strip():
            return "\n" * i + line
    return ""


def _cut_at_dedent(text: str, line_prefix: str, suffix: str) -> str:
    """Block mode: keep whole lines while they stay at or right of the start.

    The starting indentation is that of the suggestion's first non-blank line
    as it will sit in the document. The first line indented less ends the
    block and is dropped, unless it only closes brackets ('}', '});') and the
    suffix does not already start with that closer: then it is kept as the
    block's last line.
    """
    lines = text.split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        return ""
    if first == 0:
        placed = line_prefix + lines[0] if not line_prefix.strip() else line_prefix
    else:
        placed = lines[first]
    base = indent_width(placed)
    for i in range(first + 1, len(lines)):
        line = lines[i]
        if line.strip() and indent_width(line) < base:
            kept = lines[:i]
            stripped = line.strip()
            if _CLOSER_LINE.fullmatch(stripped) and not suffix.lstrip().startswith(stripped[0]):
                kept.append(line)
            return "\n".join(kept)
    return text


def _cut_repeated_lines(text: str, line_prefix: str, line_suffix: str, suffix: str) -> str:
    """Cut the tail of the suggestion that repeats the document's next lines.

    From the earliest line on whose rest (blank lines ignored, trailing
    whitespace ignored, the last line possibly unfinished) is exactly the
    start of the lines after the cursor's line, the suggestion is dropped.
    """
    nl = suffix.find("\n")
    if nl == -1:
        return text
    following = []
    for line in suffix[nl + 1:].split("\n", FOLLOWING_LINES * 4):
        if line.strip():
            following.append(line.rstrip())
            if len(following) >= FOLLOWING_LINES:
                break
    if not following:
        return text
    lines = text.split("\n")
    placed = [line_prefix + lines[0]] + lines[1:]
    whole_first_line = not line_prefix.strip() and not line_suffix.strip()
    for i in range(0 if whole_first_line else 1, len(lines)):
        tail = [ln.rstrip() for ln in placed[i:] if ln.strip()]
        if not tail or len(tail) > len(following):
            continue
        if tail[:-1] == following[: len(tail) - 1] and following[len(tail) - 1].startswith(tail[-1]):
            return "\n".join(lines[:i])
    return text


def _badness(st: ScanState) -> int:
    """How broken a scanned text is: stray closers, abandoned openers, open brackets, broken strings."""
    return (st.extra_closers + st.skipped_openers + len(st.brackets)
            + st.broken_strings + (st.string is not None))


def _fit_brackets(text: str, prefix: str, suffix: str, line_suffix: str, language_id: str) -> str:
    """Trim what duplicates the rest of the line and keep the brackets balanced.

    Candidates: the suggestion minus a tail equal to the start of the rest
    of the cursor's line (a ')' or '")' the editor already holds), the
    suggestion itself, and the suggestion cut before each closer that closes
    a bracket opened before the cursor. Each is scanned in place (prefix +
    candidate + start of suffix); the least broken wins, the trims first on
    ties. A candidate that leaves more stray closers than the document
    without the suggestion is never chosen; when none is left, ''.
    """
    head = scan_tail(prefix, language_id)
    window = suffix[:SUFFIX_WINDOW]
    baseline = scan(window, language_id, head).extra_closers
    body = text.rstrip()
    rest = line_suffix.lstrip()
    candidates = [body[: len(body) - k] for k in range(min(len(rest), len(body)), 0, -1)
                  if body.endswith(rest[:k])]
    candidates.append(text)
    own = scan(text, language_id, head).outer_closers
    candidates += [text[:p] for p in reversed(own)]
    best, best_score = "", None
    for cand in candidates:
        st = scan(cand + window, language_id, head)
        if st.extra_closers > baseline:
            continue
        score = _badness(st)
        if best_score is None or score < best_score:
            best, best_score = cand, score
    return best


def _strip_trailing_ws(text: str, line_suffix: str) -> str:
    """Strip trailing whitespace of every line; the last keeps it if code follows it directly."""
    lines = [ln.rstrip() for ln in text.split("\n")]
    keep_tail = line_suffix[:1] not in ("", " ", "\t")
    if keep_tail:
        last = text.split("\n")[-1]
        lines[-1] = last if last.strip() else ""
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def postprocess(completion: str, *, prefix: str, suffix: str, mode: str,
                language_id: str = "python") -> str:
    """The part of `completion` worth showing between `prefix` and `suffix`, or ''.

    `mode` is 'line' or 'block' (see syntax.choose_mode); any other value
    skips the line/block cut.
    """
    text = completion.replace("\r\n", "\n")
    if not text.strip():
        return ""
    line_prefix, line_suffix = _line_parts(prefix, suffix)
    if mode == "line":
        text = _first_line(text, line_suffix)
    elif mode == "block":
        text = _cut_at_dedent(text, line_prefix, suffix)
    if not text.strip():
        return ""
    text = _cut_repeated_lines(text, line_prefix, line_suffix, suffix)
    if not text.strip():
        return ""
    text = _fit_brackets(text, prefix, suffix, line_suffix, language_id)
    text = _strip_trailing_ws(text, line_suffix)
    return text if text.strip() else ""


def _dedupe_key(text: str) -> str:
    return "\n".join(ln.rstrip() for ln in text.rstrip().split("\n"))


def dedupe(candidates: list[str]) -> list[str]:
    """Drop blank candidates and repeats (equal up to trailing whitespace), keeping order."""
    seen: set[str] = set()
    out = []
    for cand in candidates:
        key = _dedupe_key(cand)
        if not key.strip() or key in seen:
            continue
        seen.add(key)
        out.append(cand)
    return out
