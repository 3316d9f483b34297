"""The header must survive ordinary typing byte for byte, so the engine's KV-cache for it is reused."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from keystroke.server.context import ContextConfig, DocumentView, build_context

_PIECES = re.compile(r"[A-Za-z_]+|\d|\n[ \t]*|[ \t]+|[^\sA-Za-z_\d]")


def count_tokens(text: str) -> int:
    return len(_PIECES.findall(text))


MODELS = '''from dataclasses import dataclass


@dataclass
class Order:
    """A customer's order."""
    order_id: str
    lines: list

    def subtotal(self) -> int:
        """Sum of line prices in cents."""
        return sum(l.cents for l in self.lines)


def load_orders(path: str) -> list[Order]:
    """Read orders from a JSON lines file."""
    return []
'''

SERVICE_HEAD = '''"""Order service."""
import json
import logging

from .models import Order, load_orders

log = logging.getLogger(__name__)


class OrderService:
    """Answers questions about orders."""

    def __init__(self, path: str) -> None:
        self.orders = {o.order_id: o for o in load_orders(path)}

    def get(self, order_id: str) -> Order:
        return self.orders[order_id]

    def revenue(self) -> int:
        total = 0
        for order in self.orders.values():
'''

SERVICE_TAIL = '''        return total

    def export(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump([o.order_id for o in self.orders.values()], fh)
'''

TYPED = [
    "            total += order.subtotal()",
    "            log.debug(\"order %s: %d\", order.order_id, total)",
]


def workspace(tmp_path: Path) -> tuple[Path, Path]:
    pkg = tmp_path / "shop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    other = tmp_path / "shop" / "report.py"
    other.write_text("import json\n\ndef write_report(orders, path):\n    total = 0\n"
                     "    for order in orders:\n        total += order.subtotal()\n    return total\n")
    return tmp_path, pkg / "service.py"


def type_lines(tmp_path: Path, config: ContextConfig):
    """Type TYPED into the service file one character at a time; yield (line number, char, PromptParts)."""
    root, path = workspace(tmp_path)
    report = root / "shop" / "report.py"
    others = [DocumentView(report.as_uri(), report.read_text(), "python", report)]
    typed = ""
    for li, line in enumerate(TYPED):
        for ci in range(len(line) + 1):
            before = SERVICE_HEAD + typed + line[:ci]
            text = before + "\n" + SERVICE_TAIL
            doc = DocumentView(path.as_uri(), text, "python", path)
            yield li, ci, build_context(doc, len(before), others, config=config, count_tokens=count_tokens,
                                        workspace_root=root)
        typed += line + "\n"


TIGHT = ContextConfig(budget_tokens=480, header_share=0.55, prefix_share=0.3, suffix_share=0.15, snap_lines=4)


@pytest.mark.parametrize("config", [ContextConfig(budget_tokens=800, snap_lines=8), TIGHT], ids=["roomy", "tight"])
def test_header_is_identical_while_typing_on_a_line(tmp_path, config):
    headers: dict[int, set[str]] = {}
    keystrokes = changes = 0
    previous = None
    for li, ci, parts in type_lines(tmp_path, config):
        headers.setdefault(li, set()).add(parts.header)
        if previous is not None:
            keystrokes += 1
            changes += parts.header != previous
        previous = parts.header
    # within a line: one header; across the whole session: almost every keystroke reuses it
    assert all(len(h) == 1 for h in headers.values()), {k: len(v) for k, v in headers.items()}
    assert changes <= len(TYPED) and keystrokes > 80
    header = next(iter(headers[0]))
    assert "def load_orders(path: str) -> list[Order]:" in header  # the sources are really there
    if config is TIGHT:  # the imports scrolled out of the prefix, so the header carries them
        assert "# from .models import Order, load_orders\n" in header


def test_prefix_start_holds_still_while_typing(tmp_path):
    # a prefix budget that forces cuts: its first line must move rarely
    starts = [parts.prefix.split("\n", 1)[0] for _li, _ci, parts in type_lines(tmp_path, TIGHT)]
    assert all(s != '"""Order service."""' for s in starts)  # really cut
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    assert moves <= 4 and len(starts) > 80, moves


def test_typing_a_call_costs_the_note_and_the_line_not_the_prompt(tmp_path, tiny_llama_dir):
    """Engine cache counters while a line with a call is typed: the usages note appears at `Order(`
    and what the engine computes is that note and the cursor's line, never the header or the prefix above."""
    from keystroke.engine import Engine
    from keystroke.engine.api import CompletionRequest, StopPolicy

    root, path = workspace(tmp_path)
    (root / "shop" / "report.py").write_text(
        "from .models import Order\n\n\ndef single(order_id, line):\n    order = Order(order_id, [line])\n"
        "    return order\n")
    engine = Engine.load(tiny_llama_dir, quant="fp32", cache_dir=tmp_path / "kv", threads=1, response_cache=False)
    config = ContextConfig(budget_tokens=800, snap_lines=8)
    line = "            again = Order(order.order_id, [])"
    notes, computed = [], []
    for ci in range(len(line) + 1):
        before = SERVICE_HEAD + line[:ci]
        text = before + "\n" + SERVICE_TAIL
        doc = DocumentView(path.as_uri(), text, "python", path)
        parts = build_context(doc, len(before), [], config=config, count_tokens=count_tokens, workspace_root=root)
        r = engine.complete(CompletionRequest(doc_id=path.as_uri(), prefix=parts.prefix, suffix=parts.suffix,
                                              header=parts.header, stop=StopPolicy(max_tokens=1, mode="line")))
        notes.append(parts.note)
        if ci:
            computed.append(r.timings.computed_tokens)
        note_and_line = len(engine.tokenizer.encode(parts.note + line[:ci])) + 4
        if ci:   # the engine runs on every keystroke (typing-through is the server's)
            assert r.timings.computed_tokens <= note_and_line, (ci, r.timings)
    opened = line.index("(") + 1
    # from the `(` to the `)` that closes the call: one note, byte for byte; before and after it: none
    assert not any(notes[:opened]) and not notes[-1]
    assert all("# order = Order(order_id, [line])" in n for n in notes[opened:-1]) and len(set(notes[opened:-1])) == 1
    assert sum(computed) < len(line) * 8  # and the whole line cost little: no keystroke recomputed the prompt
