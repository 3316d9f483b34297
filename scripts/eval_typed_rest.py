"""How often the rest of a suggestion is what a fresh request would suggest.

    python scripts/eval_typed_rest.py [--model NAME] [--cursors 12] [--seed 1]

Typing-through (server/pipeline.py) and a generation kept in flight
(server/inflight.py) answer a state the user reached by typing a prefix of
a suggestion with the rest of that suggestion. A fresh request for that
state could suggest something else: its prompt holds the typed text as
prompt tokens, and the suggestion's own tokens came from decode steps.

For cursors in a real file (the standard library's textwrap.py, a few
characters into a code line, the rest of the line removed), the script
asks the server's pipeline for a suggestion, then, for each prefix of it
that ends at a word boundary, asks again with that prefix typed, and
counts how often the fresh answer equals the rest.
"""
from __future__ import annotations

import argparse
import random
import sys
import sysconfig
from pathlib import Path

FILE = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"


def word_ends(text: str) -> list[int]:
    """Offsets inside `text` where a word (or a run of symbols) has just ended."""
    return [j for j in range(1, len(text)) if text[j - 1].isalnum() != text[j].isalnum() or text[j] == " "]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a registered name or file (default: the default model)")
    ap.add_argument("--cursors", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    from keystroke.engine import DEFAULT_MODEL
    from keystroke.engine.engine import Engine
    from keystroke.server import pipeline
    from keystroke.server.config import Config
    from keystroke.server.context import DocumentView

    engine = Engine.load(args.model or DEFAULT_MODEL, persist=False, response_cache=False)
    config = Config()
    src = FILE.read_text()
    lines = src.split("\n")
    code = [i for i, line in enumerate(lines) if len(line.strip()) > 20 and not line.strip().startswith(("#", '"'))]
    same = differ = 0
    for i in random.Random(args.seed).sample(code, args.cursors):
        line = lines[i]
        cursor = sum(len(x) + 1 for x in lines[:i]) + len(line) - len(line.lstrip()) + 4
        text = src[:cursor] + src[src.index("\n", cursor):]

        def suggest(typed: str) -> str:
            doc = DocumentView("file:///typed_rest.py", text[:cursor] + typed + text[cursor:], "python", FILE)
            out = pipeline.complete(engine, doc, cursor + len(typed), [], config).suggestions
            return out[0] if out else ""
        whole = suggest("")
        for j in word_ends(whole):
            fresh, rest = suggest(whole[:j]), whole[j:]
            same += fresh == rest
            differ += fresh != rest
            if fresh != rest:
                print(f"{whole[:j]!r}: rest {rest!r}, fresh {fresh!r}", file=sys.stderr)
    total = same + differ
    print(f"{engine.name} ({engine.quant}): {total} typed prefixes over {args.cursors} cursors in {FILE.name}; "
          f"the fresh answer equals the rest for {same} ({100 * same / max(1, total):.0f}%), differs for {differ}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
