"""Code actions, once the user picked one: what to ask the engine, how to apply its answer.

- `action_request(spec, text)` gives the prefix, suffix and stop policy to
  send to the engine;
- `apply_action(spec, text, completion)` turns the model's text into one
  replacement (an `ActionEdit`, in Python `str` offsets) that keeps a Python
  document that parsed parsing, saying in `note` what it had to leave out.
"""
from __future__ import annotations

import textwrap

from keystroke.engine.api import StopPolicy
from keystroke.engine.errors import PositionError

from .actions import (BLOCK_MAX_TOKENS, DOCSTRING_MAX_TOKENS, IMPLEMENT_MAX_TOKENS, ActionEdit, ActionSpec,
                      _parses)
from .postprocess import postprocess


def _check(spec: ActionSpec, text: str) -> None:
    if not 0 <= spec.start <= spec.end <= len(text):
        raise PositionError(f"the action's range {spec.start}..{spec.end} is outside the document "
                            f"({len(text)} characters)", "the document changed; ask for code actions again")


def action_request(spec: ActionSpec, text: str) -> tuple[str, str, StopPolicy]:
    """The prefix, suffix and stop policy to send to the engine for `spec`.

    The prefix always ends where the model's first character goes: after the
    body's indentation for a body, after the opening quotes for a docstring.
    A docstring stops at the closing quotes in free mode, since its lines may
    legitimately sit left of the indentation that ends a block.
    """
    _check(spec, text)
    head = text[: spec.start] + "\n" + spec.indent + spec.lead
    suffix = text[spec.end:]
    if spec.kind == "docstring":
        return head + '"""', suffix, StopPolicy(max_tokens=DOCSTRING_MAX_TOKENS, mode="free",
                                                 stop_strings=('"""',), language_id=spec.language_id)
    budget = IMPLEMENT_MAX_TOKENS if spec.kind == "implement" else BLOCK_MAX_TOKENS
    return head, suffix, StopPolicy(max_tokens=budget, mode="block", language_id=spec.language_id)


def _done(spec: ActionSpec, start: int, end: int, new_text: str, note: str = "") -> ActionEdit:
    title = f"{spec.title} ({note})" if note else spec.title
    return ActionEdit(start, end, new_text, complete=not note, note=note, title=title)


def _body_block(body_lines: list[str], indent: str, lead: str = "") -> str:
    return "\n" + indent + lead + "\n".join(body_lines)


def _body_parses_alone(block: str) -> bool:
    """Does an indented block parse as the body of some statement?"""
    return _parses("if True:\n" + textwrap.indent(textwrap.dedent(block.lstrip("\n")), "    "))


def _docstring_text(completion: str, indent: str) -> str | None:
    """The docstring literal after the opening quotes: the text and closing quotes."""
    doc = completion.split('"""', 1)[0]
    lines = [ln.rstrip() for ln in doc.split("\n")]
    lines[0] = lines[0].lstrip()
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    if len(lines) > 1:  # continuation lines sit at the docstring's indentation
        rest = textwrap.dedent("\n".join(lines[1:])).split("\n")
        lines = lines[:1] + [indent + ln if ln else "" for ln in rest]
    body = "\n".join(lines)
    if body.endswith(("\\", '"')) and len(lines) == 1:
        body = body[:-1].rstrip() if body.endswith("\\") else body[:-1] + '\\"'
    return body + ('"""' if len(lines) == 1 else "\n" + indent + '"""')


def apply_action(spec: ActionSpec, text: str, completion: str) -> ActionEdit:
    """The one replacement that applies `completion` for `spec`, and whether the model's text went in whole (and why not)."""
    _check(spec, text)
    python = spec.language_id == "python"
    was_valid = python and _parses(text)
    prefix, suffix, _ = action_request(spec, text)

    def fits(new_text: str) -> bool:
        if not python:
            return True
        if was_valid:
            return _parses(text[: spec.start] + new_text + text[spec.end:])
        return _body_parses_alone(new_text) if spec.kind != "docstring" else True

    if spec.kind == "docstring":
        literal = _docstring_text(completion, spec.indent)
        if literal is None:
            return _done(spec, spec.start, spec.start, "", "the model wrote no docstring")
        new_text = "\n" + spec.indent + '"""' + literal
        if fits(new_text):
            return _done(spec, spec.start, spec.end, new_text)
        first = _docstring_text(literal.split("\n", 1)[0].replace('"""', ""), spec.indent)
        if first is not None and fits("\n" + spec.indent + '"""' + first):
            return _done(spec, spec.start, spec.end, "\n" + spec.indent + '"""' + first,
                         "kept the first line, the rest did not parse")
        return _done(spec, spec.start, spec.start, "", "the docstring did not parse")

    # The prompt already ends with the indentation: leading blanks would double it.
    body = postprocess(completion.replace("\r\n", "\n").lstrip(), prefix=prefix, suffix=suffix, mode="block",
                       language_id=spec.language_id)
    body_lines = body.split("\n") if body.strip() else []
    for n in range(len(body_lines), 0, -1):
        new_text = _body_block(body_lines[:n], spec.indent, spec.lead)
        if fits(new_text):
            note = "" if n == len(body_lines) else f"kept the first {n} of {len(body_lines)} lines, the rest did not parse"
            return _done(spec, spec.start, spec.end, new_text, note)
    reason = "the model wrote nothing usable" if not body_lines else "the suggestion did not parse"
    if spec.kind == "implement" and body_lines:
        commented = "\n".join(spec.indent + "# " + ln for ln in
                              textwrap.dedent(spec.indent + "\n".join(body_lines)).split("\n"))
        stub = text[spec.start: spec.end]
        if not stub.startswith("\n"):  # one-line def: the stub goes on its own line
            stub = "\n" + spec.indent + "pass"
        new_text = ("\n" + spec.indent + spec.lead
                    + "# keystroke: suggestion kept as a comment, it did not parse\n" + commented + stub)
        if fits(new_text):
            return _done(spec, spec.start, spec.end, new_text, reason + "; kept as a comment")
    return _done(spec, spec.start, spec.start, "", reason)
