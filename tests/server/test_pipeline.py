"""The one completion pipeline: typing-through for every backend, the remote one included."""
from __future__ import annotations

from keystroke.server import pipeline
from keystroke.server.config import Config
from keystroke.server.context import DocumentView
from tests.engine.test_remote import backend_for, serve, stream_texts  # noqa: F401 - `serve` is a fixture

URI = "file:///work/add.py"


def doc(text: str) -> DocumentView:
    return DocumentView(URI, text, "python")


def test_typed_through_gives_the_rest_of_the_shown_suggestion():
    shown = pipeline.TypedThrough()
    text = "def add(a, b):\n    return "
    shown.remember(URI, text + "\n", len(text), ["a + b", "b + a"])
    assert shown.rest(URI, text + "a \n", len(text) + 2, n=2) == ["+ b"]      # only the one still matching
    assert shown.rest(URI, text + "a + b\n", len(text) + 5) is None            # nothing left to suggest
    assert shown.rest(URI, text + "\n", len(text)) is None                     # nothing typed
    assert shown.rest(URI, text + "a \n# changed", len(text) + 2) is None      # the text after the cursor changed
    assert shown.rest(URI, "x" + text + "a \n", len(text) + 3) is None         # the text before it changed
    assert shown.rest("file:///other.py", text + "a \n", len(text) + 2) is None
    shown.forget(URI)
    assert shown.rest(URI, text + "a \n", len(text) + 2) is None


def test_the_remote_backend_gets_typing_through_without_a_request(serve):
    server = serve(stream_texts(["total", " = a + b"]))
    backend = backend_for(server.url)
    typed = pipeline.TypedThrough()
    text = "def add(a, b):\n    "
    first = pipeline.complete(backend, doc(text), len(text), [], Config(), typed=typed)
    assert first.suggestions == ["total = a + b"] and not first.typed_through
    text += "tot"
    second = pipeline.complete(backend, doc(text), len(text), [], Config(), typed=typed)
    assert second.typed_through and second.suggestions == ["al = a + b"] and second.result is None
    assert len(server.posts()) == 1                      # the second answer asked the server nothing
    text += "x"                                          # off the suggestion: the server is asked again
    third = pipeline.complete(backend, doc(text), len(text), [], Config(), typed=typed)
    assert not third.typed_through and len(server.posts()) == 2


def test_plan_uses_the_servers_settings():
    config = Config(max_tokens=7, context_budget=256, temperature=0.0)
    text = "import os\n\n\ndef f(x):\n    return os.path."
    p = pipeline.plan(doc(text), len(text), [], config, n=1)
    assert p.request.stop.max_tokens == 7 and p.mode == "line" and p.request.sampling.temperature == 0.0
    assert p.request.prefix.endswith("return os.path.")
    several = pipeline.plan(doc(text), len(text), [], config, n=3)
    assert several.request.n == 3 and several.request.sampling.temperature == pipeline.CANDIDATES_TEMPERATURE
    forced = pipeline.plan(doc(text), len(text), [], config, mode="block")
    assert forced.mode == "block" and forced.request.stop.mode == "block"
