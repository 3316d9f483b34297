"""When to stop a completion, judged on its text.

A `StopChecker` is fed the whole decoded completion after every token and
answers `None` (go on) or a `Stop` (why, and how much of the text to keep).
It handles the rules that read text: stop strings, single-line mode, block
mode and repetition. The rules that count tokens or time (EOS, max tokens,
deadline, cancellation) belong to the decode loop in `generate`.

The text is expected to grow by appending (the decode loop holds back
partial UTF-8); the checker scans only what is new, and starts over if the
text ever changes behind it.

Decisions, so the server can rely on them:

- **Stop strings** cut before the earliest match.
- **Line mode** stops at the first newline and keeps the text before it.
  A newline that comes before any non-whitespace stops too (the completion
  is then blank): the cursor's line is what the user asked to complete, and
  a model that starts a new line says it has nothing to add to it.
  Except where the line is visibly unfinished (it ends in an open
  bracket, a comma, an operator or a dot): there `generate` does not let
  the first token break the line (`continues_on_line`).
- **Block mode** completes the statement at the cursor with its nested
  body. The starting level is the indentation of the cursor's line
  (including whitespace the completion adds before its first character).
  The completion stops at the start of a later line whose first
  non-whitespace character sits at or below the starting level (strictly
  below it when the cursor's line was blank and indented: then the block
  is the rest of the body the cursor is in, e.g. a whole function body) while no bracket opened by the completion is
  left open and no string is (a docstring's lines do not end a block); the text is cut at the end
  of the last non-blank line. So Python's `def f():\\n    body\\n` ends at
  the next dedented line, and a brace block ends after the `}` that
  balances it (immediately, when that line holds only closing brackets and
  `;` or `,`). Brackets inside string literals and comments are not
  counted: the policy's `language_id` picks the lexer's `Lexicon` (the
  one mode choice uses); without a language it knows `#` comments (at a
  line start or after whitespace), `//` and `/* */` comments, '...',
  "..." and `...` strings (one line long) and triple-quoted strings. It
  reads the cursor's line first so a cursor inside a string is known.
- **Suffix**: the model has begun to re-type the code after the cursor (a
  FIM model that wrote the middle goes on with the next function,
  sometimes from its second line) when a finished line is the suffix's
  next code line (a line holding a letter or digit; compared without
  surrounding whitespace), or when two finished lines in a row are two
  lines in a row of the suffix's next three code lines (one such line
  alone may be a legitimate repeat, like a second `parts.append(c)`).
  The text is cut at the end of the last non-blank line before them.
  Then, where the rest of the cursor's line is blank and the suffix has a
  code line below it, the kept text's last line (the one that code would
  follow; not a line the user began) is judged: it is cut too, and the stop
  says `suffix`, when that code cannot follow it (`_dead_end`). Either it
  jumps out of its block (the language's `jumps`: Python's `return`,
  `raise`, `break`, `continue`) while that code is in the block, which
  makes it dead code; at a blank line inside a body a FIM model often
  writes the function's final `return`, which is already below: 22 of 93
  HumanEval single-line suggestions looked at were that, all wrong, and 1
  of its 1,033 target lines fits the rule (a `return` before a dead
  `break`). Or, where indentation is syntax (Python), it sits left of that
  code and opens nothing for it (`# Test cases` at column 0 above a
  body's code): 6 more of 100 suggestions, none of the 1,033 targets; or
  it opens a block (`while i < l:`) that code is not indented into: 7 more
  of 100, none of the targets.
  The engine asks once more when this leaves nothing.
- **A header with no body** (Python): at a blank cursor line right under a
  block header (`def f():`, `for x in xs:`) that has nothing yet but a
  docstring, a suggestion whose first line sits at or left of the header
  is cut to nothing at its first character (stop `suffix`). The block
  would keep no body: at the first body line of a function a FIM model
  often starts `def main():` or `if __name__ == "__main__":` at column 0.
  512 of HumanEval's 1,033 single-line tasks sit there and none of their
  target lines is that far left; 11 of 100 suggestions were, all wrong.
  The local engine does not get there at an empty cursor line: `generate`
  puts the first line at the body's column (`body_column`: the docstring's,
  else the header's plus the text's indent step), as an editor's
  auto-indent would have. Banning tokens at or left of the header instead
  (tried) wrote lines at odd columns (17 spaces, a space and a tab).
  Whitespace the user typed at or left of the header is their choice and
  turns the rule off.
- **Repetition** (when the policy asks for it): a non-empty line repeated
  three times in a row keeps only the first copy; a tail that repeats a
  unit of 2 to 64 characters holding a letter or digit, at least 4 times
  and over at least 24 characters, keeps the first copy of the unit.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Sequence

from .api import StopPolicy, StopReason
from .languages import PYTHON, code_lexicon
from .lexer import Lexicon, Scanner, ScanState, indent_width, scan

__all__ = ["Stop", "StopChecker", "body_column", "indent_width", "text_above"]

_CLOSING_LINE = frozenset(")]};,")
_FIRST_WORD = re.compile(r"\s*(\w+)")
LINE_REPEATS = 3
LOOP_MIN_REPEATS = 4
LOOP_MIN_CHARS = 24
LOOP_MAX_UNIT = 64


@dataclass(frozen=True)
class Stop:
    reason: StopReason
    cut: int  # keep text[:cut]


class StopChecker:
    def __init__(self, policy: StopPolicy, line_before_cursor: str = "", suffix: str = "",
                 above: str = "") -> None:
        """`above`: the text before the cursor's line (its last lines are enough)."""
        self.policy = policy
        self.line_before_cursor = line_before_cursor
        self._suffix_lines = next_code_lines(suffix)
        self._lexicon = code_lexicon(policy.language_id)
        self._below = _next_code_indent(suffix, self._lexicon)
        # A blank cursor line under a block header with no body yet: where the suggestion's first line
        # goes is the model's choice (not whitespace the user typed at or left of the header).
        header = bodiless_header(above, self._lexicon) if not line_before_cursor.strip() else None
        typed = indent_width(line_before_cursor)
        self._header = header if header is not None and (typed == 0 or typed > header) else None
        self._above, self._suffix = above, suffix
        self._indents: Indents | None | bool = False   # read on first need (`_breaks_indentation`)
        self._reset()

    def _reset(self) -> None:
        self._text = ""
        # Only brackets opened by the completion count (`ScanState.opened`).
        self._scanner = Scanner(self._lexicon, context=self.line_before_cursor)
        self._scanned = 0                # completion text fed to the scanner so far
        cursor_line = self.line_before_cursor
        self._start_level = indent_width(cursor_line) if cursor_line.strip() else None
        # On a blank line inside a body the block is the rest of that body; after code
        # (an opener such as `def f():`) or at top level it is one statement with its block.
        self._blank_start = not cursor_line.strip()
        self._line = self.line_before_cursor  # the current line so far, cursor line included
        self._line_start = -len(self.line_before_cursor)  # where it starts, in completion offsets
        self._seen_content = False       # any non-whitespace in the completion yet
        self._open_at_line_start = 0     # brackets of the completion open where the line starts
        self._code_at_line_start = True  # the line starts outside strings and comments
        self._last_content_end = 0       # end of the last non-blank line's text
        self._lines: list[str] = []      # the completion's finished lines
        self._line_ends: list[int] = []  # offset of each finished line's newline
        self._pending: Stop | None = None
        self._suffix_match: tuple[int, int] | None = None   # (index in the suffix's lines, cut before it)

    # -- public -------------------------------------------------------------

    @property
    def seen_content(self) -> bool:
        """Whether the completion checked so far holds any non-whitespace."""
        return self._seen_content

    def check(self, text: str) -> Stop | None:
        """Feed the whole completion so far; a `Stop` once a rule fires."""
        if not text.startswith(self._text):
            self._reset()
        new, start = text[len(self._text):], len(self._text)
        self._text = text
        found: list[Stop] = []
        if self.policy.stop_strings:
            hit = self._stop_strings(text, start)
            if hit is not None:
                found.append(hit)
        for offset, ch in enumerate(new, start):
            hit = self._feed_char(ch, offset)
            if hit is not None:
                found.append(hit)
                break
        if self.policy.stop_on_repetition and not found:
            hit = self._char_loop(text)
            if hit is not None:
                found.append(hit)
        return self._settle(min(found, key=lambda s: s.cut)) if found else None

    # -- rules --------------------------------------------------------------

    def _stop_strings(self, text: str, start: int) -> Stop | None:
        best = None
        for s in self.policy.stop_strings:
            if not s:
                continue
            at = text.find(s, max(0, start - len(s) + 1))
            if at >= 0 and (best is None or at < best):
                best = at
        return Stop("stop_string", best) if best is not None else None

    def _feed_char(self, ch: str, offset: int) -> Stop | None:
        mode = self.policy.mode
        if ch == "\n":
            line = self._line
            hit = self._retypes_suffix(line.strip())
            if hit is not None:
                return hit
            if mode == "line":
                return Stop("line", offset)
            if line.strip():
                self._last_content_end = offset
            hit = None
            if mode == "block":
                self._scanner.feed(self._text[self._scanned:offset + 1])
                self._scanned = offset + 1
                st = self._scanner.state()
                hit = self._block_at_line_end(line, offset, st)
                self._open_at_line_start = st.opened
                self._code_at_line_start = not st.in_string and not st.in_comment
            if hit is None and self.policy.stop_on_repetition:
                hit = self._line_repeats(line, offset)
            self._line, self._line_start = "", offset + 1
            return hit
        first_char_of_line = not self._line.strip() and not ch.isspace()
        self._line += ch
        if ch.isspace():
            return None
        if first_char_of_line:
            level = indent_width(self._line)
            if not self._seen_content and self._header is not None and level <= self._header:
                return Stop("suffix", 0)     # the header above would keep no body: nothing to keep
            if self._start_level is None:
                self._start_level = level
            elif mode == "block" and self._seen_content and not self._open_at_line_start \
                    and self._code_at_line_start \
                    and (level < self._start_level if self._blank_start and self._start_level > 0
                         else level <= self._start_level):
                return Stop("block", self._last_content_end)
        self._seen_content = True
        return None

    def _retypes_suffix(self, line: str) -> Stop | None:
        if not line:
            return None      # blank lines neither match nor break a match
        cut = self._last_content_end if self._line_start > 0 else 0
        wanted = self._suffix_lines
        previous, self._suffix_match = self._suffix_match, None
        if wanted and line == wanted[0]:
            return Stop("suffix", cut)
        if previous is not None and previous[0] + 1 < len(wanted) and line == wanted[previous[0] + 1]:
            return Stop("suffix", previous[1])
        if line in wanted:
            self._suffix_match = (wanted.index(line), cut)
        return None

    def finish(self) -> Stop | None:
        """At the end of the completion (the model's end token): the suffix rules for its last line,
        which no line break finished; None when they keep it all."""
        hit = self._retypes_suffix(self._line.strip())
        settled = self._settle(hit or Stop("eos", len(self._text)))
        return settled if settled.reason != "eos" else None

    def _settle(self, stop: Stop) -> Stop:
        """`stop`, or a cut before the kept text's last lines while the suffix cannot follow the last
        (`_dead_end`); only where code follows on the next line, and never into a line the user began."""
        if self._below is None:
            return stop
        lines = (self.line_before_cursor + self._text[:stop.cut]).rstrip().split("\n")
        cut = stop
        while lines[-1].strip() and not (len(lines) == 1 and self.line_before_cursor.strip()) \
                and self._dead_end(lines[-1], lines[:-1]):   # (not a line the user began)
            lines = "\n".join(lines[:-1]).rstrip().split("\n")
            cut = Stop("suffix", max(0, len("\n".join(lines)) - len(self.line_before_cursor)))
        return cut

    def _dead_end(self, line: str, earlier: Sequence[str] = ()) -> bool:
        """Whether the suffix's next code line (at indentation `_below`) cannot follow `line`: it jumps
        out of its block (`Lexicon.jumps`) with that code in the block; or, where indentation is syntax
        (Python), and the line does not go on below (an open bracket or string, a `\\`), it opens a
        block (`:`) that the code below is not indented into, or it opens nothing and sits left of that
        code. The code below would be dead, an indentation error, or sit under a stray comment. Also
        where the suggestion's lines (`earlier`, then `line`) and the code below them, read after
        the text above, make an indentation error (`Indents`): a header at column 0 whose body
        would be the rest of the function (`if __name__ == "__main__":` inside one)."""
        if self._breaks_indentation(earlier, line):
            return True
        word = _FIRST_WORD.match(line)
        level = indent_width(line)
        if word is not None and word.group(1) in self._lexicon.jumps and level <= self._below:
            return True
        if self._lexicon.block_opener != ":":
            return False
        st = scan(line, self._lexicon)
        if st.brackets or (st.in_string and not st.in_comment) or st.last_code == "\\":
            return False     # the line goes on below
        if st.last_code == ":":
            return level >= self._below    # a block whose body would be missing
        return level < self._below

    def _breaks_indentation(self, earlier: Sequence[str], line: str) -> bool:
        if self._lexicon.block_opener != ":":
            return False
        if self._indents is False:
            self._indents = indents_above(self._above)
        if self._indents is None or self._indents is False:
            return False
        ind = self._indents.copy()
        for text in [*earlier, line]:
            if not ind.feed(text):
                return True
        if ind.inside:
            return False    # the line goes on below
        for text in self._suffix.split("\n")[1:SUFFIX_INDENT_LINES]:
            if not ind.feed(text):
                return True
        return False

    def _block_at_line_end(self, line: str, offset: int, st: ScanState) -> Stop | None:
        """A line of only closing brackets that balances the completion's block ends it at once."""
        body = line.strip()
        if (body and set(body) <= _CLOSING_LINE and st.most_opened > 0 and not st.opened
                and self._start_level is not None and indent_width(line) <= self._start_level
                and not st.in_string and not st.in_comment):
            return Stop("block", offset)
        return None

    def _line_repeats(self, line: str, offset: int) -> Stop | None:
        self._lines.append(line)
        self._line_ends.append(offset)
        tail = self._lines[-LINE_REPEATS:]
        if len(tail) == LINE_REPEATS and tail[0].strip() and all(x == tail[0] for x in tail):
            # keep the first copy: cut at the newline that ends it
            return Stop("repetition", self._line_ends[-LINE_REPEATS])
        return None

    def _char_loop(self, text: str) -> Stop | None:
        n = len(text)
        for unit in range(2, min(LOOP_MAX_UNIT, n // LOOP_MIN_REPEATS) + 1):
            reps = max(LOOP_MIN_REPEATS, -(-LOOP_MIN_CHARS // unit))
            if reps * unit > n:
                continue
            piece = text[n - unit:]
            if not any(c.isalnum() for c in piece):
                continue
            if text.endswith(piece * reps):
                return Stop("repetition", n - (reps - 1) * unit)
        return None


SUFFIX_LINES = 3
SUFFIX_INDENT_LINES = 40   # lines below the cursor read for an indentation error a suggestion makes


def _lines_below(suffix: str) -> Iterator[str]:
    """The lines after the cursor's line in `suffix` that hold a letter or digit."""
    return (line for line in suffix.split("\n")[1:] if any(c.isalnum() for c in line))


def _next_code_indent(suffix: str, lexicon: Lexicon) -> int | None:
    """The indentation of the suffix's next code line (`_lines_below`, not a line comment), if the
    rest of the cursor's line is blank; else None."""
    if suffix.split("\n", 1)[0].strip():
        return None
    comments = tuple(lexicon.line_comments)
    return next((indent_width(line) for line in _lines_below(suffix)
                 if not (comments and line.strip().startswith(comments))), None)


class Indents:
    """Python's stack of block columns, fed a line at a time, for code being typed.

    A line inside brackets, a string or after a `\\` goes on the statement above it and is not
    checked; a line of only a comment does not count (as in Python). `feed` says False at what
    Python would reject: a line deeper than the one before it without a header (`:`) there, or one
    left of it at a column no open block has."""

    def __init__(self) -> None:
        self.stack = [0]
        self.after_header = False
        self.state: ScanState | None = None

    def copy(self) -> "Indents":
        other = Indents()
        other.stack, other.after_header, other.state = list(self.stack), self.after_header, self.state
        return other

    @property
    def inside(self) -> bool:
        """Whether the next line goes on the statement above (an open bracket, string or `\\`)."""
        st = self.state
        return st is not None and bool(st.brackets or st.in_string or st.last_code == "\\")

    def feed(self, line: str) -> bool:
        statement = not self.inside
        self.state = scan(line + "\n", PYTHON, self.state)
        stripped = line.strip()
        if statement and stripped and not stripped.startswith("#"):
            level = indent_width(line)
            if level > self.stack[-1]:
                if not self.after_header:
                    return False
                self.stack.append(level)
            else:
                while level < self.stack[-1]:
                    self.stack.pop()
                if level != self.stack[-1]:
                    return False
        if not self.inside:   # a statement ended here (a comment or blank line keeps the last one's end)
            self.after_header = self.state.last_code == ":"
        return True


def indents_above(above: str) -> Indents | None:
    """The `Indents` after `above` (Python), read from its first line at column 0 that starts code;
    None where that reading finds an error itself (it may have begun inside a string) or ends inside
    a statement."""
    lines = above.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    start = next((i for i, line in enumerate(lines) if line[:1].strip() and not line.startswith(("#", "\"", "'", ")", "]", "}"))), None)
    if start is None:
        return None
    ind = Indents()
    for line in lines[start:]:
        if not ind.feed(line):
            return None
    return None if ind.inside else ind


_DOCSTRING = re.compile(r"""\s*[rRuUbB]{0,2}("{3}|'{3})""")


def bodiless_header(above: str, lexicon: Lexicon) -> int | None:
    """Where indentation is syntax (Python): the indentation of the block header that the text above
    the cursor's line ends with, when that block has nothing yet but a docstring, else None. A line at
    or left of it there would leave the block empty (a `def` with only its docstring)."""
    if lexicon.block_opener != ":":
        return None
    lines = [line for line in above.split("\n")[-60:] if line.strip()]
    if lines and (m := _DOCSTRING.search(lines[-1])) is not None \
            and lines[-1].rstrip().endswith(m.group(1)):
        quote = m.group(1)
        i = len(lines) - 1    # back to the line that opens the docstring ending on the last line
        if not (_DOCSTRING.match(lines[i]) and lines[i].count(quote) >= 2):
            i -= 1
            while i >= 0 and quote not in lines[i]:
                i -= 1
            if i < 0 or not _DOCSTRING.match(lines[i]):
                return None
        lines = lines[:i]
    if not lines:
        return None
    st = scan(lines[-1], lexicon)
    if st.last_code != ":" or st.brackets or st.in_string or st.extra_closers:
        return None      # not a header, or the last line of a longer one (whose first line is not read)
    return indent_width(lines[-1])


def body_column(above: str, lexicon: Lexicon, suffix: str = "") -> int | None:
    """The column of the first body line of the block header with no body that `above` ends with
    (`bodiless_header`), or None without one or where the lines near it indent with tabs.

    A docstring's column where the block has one, else the header's plus the text's usual indent
    step: the commonest increase of indentation from one line to the next, in the lines above and
    in `suffix` (a file may indent a body by 4 and its blocks by 2), else 4."""
    header = bodiless_header(above, lexicon)
    if header is None:
        return None
    lines = [line for line in above.split("\n")[-60:] if line.strip()]
    below = [line for line in suffix.split("\n")[1:60] if line.strip()]
    if any(line.startswith("\t") for line in lines + below):
        return None
    last = indent_width(lines[-1])
    if last > header:
        return last
    steps: Counter[int] = Counter()
    for part in (lines, below):
        widths = [indent_width(line) for line in part]
        steps.update(b - a for a, b in zip(widths, widths[1:]) if b > a)
    return header + (max(steps, key=lambda k: (steps[k], -k)) if steps else 4)


ABOVE_CHARS = 4000


def text_above(prefix: str) -> str:
    """What a `StopChecker` reads above the cursor: the end of the text before the cursor's line."""
    return prefix[: prefix.rfind("\n") + 1][-ABOVE_CHARS:]


def next_code_lines(suffix: str) -> tuple[str, ...]:
    """The first SUFFIX_LINES lines of `_lines_below(suffix)`, stripped."""
    return tuple(line.strip() for line in islice(_lines_below(suffix), SUFFIX_LINES))
