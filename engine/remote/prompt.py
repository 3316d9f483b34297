"""The prompt a remote server gets, as text, and the completion read back at the cursor.

The layout is `fim.build_prompt`'s, as for the local engine; the server's
tokenizer turns the text into tokens. Token healing happens here at the text
level: trailing whitespace is held back from the prompt (`hold_back_space`)
and expected again at the start of the completion (`unheal`).
"""
from __future__ import annotations

from .. import fim


class _PartsOnly:
    """A stand-in tokenizer: `fim.build_prompt` then yields only the order of the parts."""

    add_bos = False
    bos_id = None

    def encode(self, text: str) -> list[int]:
        return [0]


def render_prompt(template: fim.FimTemplate | None, header: str, prefix: str, suffix: str) -> str:
    """The prompt as text, in exactly the order `fim.build_prompt` gives the local engine.

    Without a template it is `header + prefix` (the suffix is only used by the
    server's post-processing, as locally). BOS is left to the server.
    """
    layout = fim.build_prompt(_PartsOnly(), template, header, prefix, suffix)  # type: ignore[arg-type]
    cut = prefix.rfind("\n") + 1 if template is not None and template.order == "psm" else 0
    text = {"header": header, "lines": prefix[:cut], "prefix": prefix[cut:], "suffix": suffix, "bos": ""}
    if template is not None:
        text.update(fim_prefix=template.prefix, fim_suffix=template.suffix, fim_middle=template.middle)
    return "".join(text[name] for name, _ in layout.parts)


def hold_back_space(template: fim.FimTemplate | None, prefix: str) -> tuple[str, str]:
    """(prefix to send, trailing spaces/tabs held back): text-level token healing for whitespace.

    BPE and SentencePiece vocabularies glue a space to the word after it
    (" uni", "▁return"), so a prompt that ends in spaces (the cursor after
    indentation, or after `= `) ends on a token the model rarely saw there.
    The local engine heals the last token; a remote tokenizer is out of
    reach, so the whitespace run is left out of the prompt and expected at
    the start of the completion instead (see `unheal`). Every layout of
    `render_prompt` ends at the cursor (/infill, which the server lays out,
    does not use this).
    """
    body = prefix.rstrip(" \t")
    return body, prefix[len(body):]


def unheal(raw: str, held: str) -> str | None:
    """The completion at the cursor from the text generated after the held-back whitespace.

    None while `raw` is still a prefix of `held` (not decided yet). When the
    model wrote other whitespace than the user's (a different indentation),
    its leading spaces and tabs are dropped: the cursor already has the user's.
    """
    if not held or raw.startswith(held):
        return raw[len(held):]
    if held.startswith(raw):
        return None
    return raw.lstrip(" \t")
