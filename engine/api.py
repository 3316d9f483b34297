"""The seam between server and engine: one request in, candidates out.

Everything here is plain data. The server fills a `CompletionRequest` from an
editor's state; a `Backend` (the local torch `Engine`, or a remote HTTP
engine) answers with a `CompletionResult`. Nothing here knows tokens or LSP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

StopMode = Literal["line", "block", "free"]

StopReason = Literal[
    "eos",          # the model's end-of-sequence or a stop token
    "max_tokens",   # the token budget ran out
    "deadline",     # the deadline in milliseconds passed
    "stop_string",  # one of the request's stop strings appeared
    "line",         # single-line mode: the line ended
    "block",        # block mode: brackets balanced and indentation returned
    "repetition",   # a repeated line or n-gram loop was cut
    "suffix",       # the model began to re-type the code after the cursor
    "cancelled",    # the request's cancellation check said so
    "cached",       # served from the response cache
    "error",        # the backend failed; see CompletionResult.error
]


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class StopPolicy:
    """When generation ends, besides EOS."""

    max_tokens: int = 64
    deadline_ms: float | None = None
    stop_strings: tuple[str, ...] = ()
    mode: StopMode = "free"
    stop_on_repetition: bool = True
    # The document's LSP languageId: block mode reads its strings and comments with that
    # language's lexicon (engine/languages.py); '' reads the conventions common to most.
    language_id: str = ""


@dataclass(frozen=True)
class ContextFile:
    """Code from one file of the workspace (or an excerpt of it), for a model's repository format."""

    path: str
    text: str


@dataclass
class CompletionRequest:
    """One completion for one cursor in one document.

    `header` is the stable context (it changes rarely, so it goes first and
    its KV-cache survives typing); `prefix` is the document text before the
    cursor and `suffix` the text after it.

    `files` and `path` are the same context as files: a backend whose model
    was trained on a repository format (Qwen2.5-Coder's `<|file_sep|>`
    blocks) uses them instead of `header`; others ignore them.
    """

    doc_id: str
    prefix: str
    suffix: str = ""
    header: str = ""
    files: tuple[ContextFile, ...] = ()
    path: str = ""              # the document's name in the workspace
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: StopPolicy = field(default_factory=StopPolicy)
    n: int = 1
    is_cancelled: Callable[[], bool] = lambda: False
    use_cache: bool = True
    # Called with the first candidate's text so far (before any stop rule cuts it) after each
    # generated token, on the thread that runs the backend; n == 1 only (server/inflight.py).
    on_text: Callable[[str], None] | None = None


@dataclass
class Timings:
    """Where the time and the tokens of one request went."""

    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    reused_memory_tokens: int = 0
    reused_disk_tokens: int = 0
    computed_tokens: int = 0
    decode_tokens: int = 0
    decode_passes: int = 0          # model passes of the decode loop: fewer than tokens when drafts were taken
    response_cache_hit: bool = False

    @property
    def reused_tokens(self) -> int:
        return self.reused_memory_tokens + self.reused_disk_tokens


@dataclass
class Candidate:
    text: str
    stop_reason: StopReason
    tokens: int = 0


@dataclass
class CompletionResult:
    candidates: list[Candidate]
    timings: Timings = field(default_factory=Timings)
    error: str | None = None

    @property
    def text(self) -> str:
        """The first candidate's text, or '' when there is none."""
        return self.candidates[0].text if self.candidates else ""


def approx_tokens(text: str) -> int:
    """A rough token count (about 4 characters a token) for a backend without a tokenizer here."""
    return (len(text) + 3) // 4


class Backend(Protocol):
    """What the server needs from an engine, local or remote."""

    def complete(self, request: CompletionRequest) -> CompletionResult: ...

    def count_tokens(self, text: str) -> int:
        """The prompt length of `text` in the backend's tokens (or a close estimate)."""
        ...

    def watch(self, on_state_change: Callable[[str, str], None]) -> None:
        """Call `on_state_change(state, message)` (from any thread) when the engine goes "down" or comes "up"."""
        ...

    def info(self) -> dict: ...

    def stats(self) -> dict: ...

    def clear_cache(self) -> None: ...

    def close_document(self, doc_id: str) -> None: ...
