"""What a remote backend is told, and which FIM template its prompts use.

`RemoteSettings` is the parsed `engine` section (see `backends.make_remote`).
The template is one of `fim.KNOWN_TEMPLATES` spelled as text: named in the
settings, or, for "auto", found by asking the server's tokenizer which FIM
tokens it has (`template_for_server`), else guessed from the served model's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import fim

FIM_CHOICES = ("auto", "none", "infill") + tuple(name for name, _, _ in fim.KNOWN_TEMPLATES)

# Model-name hints for "auto" when the server has no tokenize endpoint to ask:
# (word, second word or "", template) - both words in the name pick the template.
NAME_HINTS = (("qwen", "coder", "qwen"), ("starcoder", "", "starcoder"), ("codellama", "", "codellama"),
              ("code-llama", "", "codellama"), ("deepseek", "coder", "deepseek"))


@dataclass(frozen=True)
class RemoteSettings:
    url: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_ms: float = 10_000
    verify_tls: bool = True
    fim: str = "auto"               # a template name, "auto", "none" or "infill" (llama.cpp's /infill)
    cache_prompt: bool = True       # llama.cpp's hint to keep the prompt's KV-cache
    retries: int = 2                # extra attempts after a connection error
    backoff_ms: float = 200         # first retry delay; doubles each time
    failure_threshold: int = 3      # failed requests in a row before the backend is "down"
    cooldown_ms: float = 5_000      # how long "down" lasts before the next probe


def text_template(name: str, spelling: tuple[str, str, str] | None = None) -> fim.FimTemplate:
    """The known template `name`, spelled as text (the spelling without SentencePiece's '▁' by default)."""
    for known, spellings, order in fim.KNOWN_TEMPLATES:
        if known == name:
            pre, suf, mid = spelling or next((s for s in spellings if not s[0].startswith("▁")), spellings[0])
            return fim.FimTemplate(known, pre, suf, mid, order)
    raise ValueError(f"unknown FIM template {name!r}")


def template_for_server(tokenize: Callable[[str], list] | None,
                        model: str | None) -> tuple[fim.FimTemplate | None, str]:
    """(template, how it was found) for "auto": from the server's tokenizer, else from the model's name.

    `tokenize` is text -> token list through the server, or None when it has no such endpoint.
    """
    if tokenize is not None:
        base = len(tokenize(""))
        for name, spellings, _ in fim.KNOWN_TEMPLATES:
            for spelling in spellings:
                if len(tokenize("".join(spelling))) - base == 3:   # each one token: the model has them
                    return text_template(name, spelling), "tokenizer"
        return None, "tokenizer"
    lowered = (model or "").lower()
    for a, b, name in NAME_HINTS:
        if a in lowered and b in lowered:
            return text_template(name), "model name"
    return None, "default"
