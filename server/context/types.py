"""The data that flows through context building: documents in, prompt parts out."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from keystroke.engine.api import ContextFile


@dataclass(frozen=True)
class DocumentView:
    """One open document as the context sources see it. `path` is None for unsaved buffers."""

    uri: str
    text: str
    language_id: str = ""
    path: Path | None = None


@dataclass(frozen=True)
class ContextConfig:
    """Which sources go into the prompt header, and how the token budget is split.

    The budget is `budget_tokens` in all, shared as `header_share`,
    `prefix_share` and `suffix_share` (fractions that should add up to 1).
    """

    imports: bool = True
    signatures: bool = True
    siblings: bool = True
    similar: bool = True
    usages: bool = True             # other calls of what the cursor calls, as a note above its line
    budget_tokens: int = 2048
    header_share: float = 0.25
    prefix_share: float = 0.60
    suffix_share: float = 0.15
    max_signatures: int = 12
    max_siblings: int = 16
    max_similar: int = 3
    usage_lines_before: int = 40    # lines above the cursor whose names are resolved to signatures
    usage_lines_after: int = 5
    similar_window_lines: int = 20  # size of the identifier windows compared by Jaccard
    similar_min_score: float = 0.15
    snap_lines: int = 16            # prefix/suffix cuts move in steps of this many lines
    max_workspace_file_bytes: int = 256_000
    max_document_chars: int = 1_000_000  # other documents larger than this are skipped
    include_path: bool = True       # end the header with the current file's path
    usages_tokens: int = 48         # the usages note's budget, taken from the header share
    usages_lines: int = 1           # at most this many calls in the note

    def budgets(self) -> tuple[int, int, int]:
        """(header, prefix, suffix) token budgets."""
        total = max(0, self.budget_tokens)
        header = int(total * self.header_share)
        prefix = int(total * self.prefix_share)
        suffix = int(total * self.suffix_share)
        return header, prefix, suffix

    def enabled(self) -> tuple[str, ...]:
        """Names of the header sources that are on, in priority order."""
        return tuple(n for n in ("imports", "signatures", "siblings", "similar") if getattr(self, n))


@dataclass
class PromptParts:
    """What the engine gets: a stable header, the text before and after the cursor.

    `note` (comment lines on the call at the cursor, or "") sits inside
    `prefix`, right before the cursor's line; the rest of `prefix` is the
    document's text. `provenance` has one entry per part that went in:
    {"source", "tokens", "items", "origins"}.
    """

    header: str
    prefix: str
    suffix: str
    provenance: list[dict] = field(default_factory=list)
    note: str = ""
    files: tuple[ContextFile, ...] = ()   # the header's context as files (a repository-format prompt)
    path: str = ""                        # the document's name in the workspace

    def document_prefix(self) -> str:
        """`prefix` without the note: text of the document that ends at the cursor."""
        if not self.note:
            return self.prefix
        cut = self.prefix.rfind(self.note)
        return self.prefix[:cut] + self.prefix[cut + len(self.note):]


@dataclass(frozen=True)
class Snippet:
    """One piece of header context, before it is commented out and rendered.

    `title` groups snippets under one heading line; `rank` orders them for the
    budget (higher first); `order` fixes where they are rendered, so the
    header does not reshuffle when a rank moves.
    """

    source: str
    title: str
    text: str
    rank: float
    order: tuple
    origin: str = ""
    line: int = -1          # where it starts in its origin, to drop the same block offered twice
    language: str = ""      # the origin's language id, for secret redaction


# --------------------------------------------------------------------------- what parsing a file gives

@dataclass(frozen=True)
class Import:
    """One import statement. `names` maps each name it binds to (module, original name or None)."""

    text: str
    line: int
    module: str
    names: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class Symbol:
    """One definition. `signature` is its header (and first doc line), body elided, dedented."""

    name: str
    kind: str          # function, method, class, type, variable
    signature: str
    start_line: int
    end_line: int
    parent: str | None = None   # the enclosing class/impl/type name
    header_end_line: int = -1   # last line of the header (where the body starts)


@dataclass(frozen=True)
class Outline:
    language: str
    imports: tuple[Import, ...]
    symbols: tuple[Symbol, ...]
    parsed: bool  # False when the indentation fallback produced it
