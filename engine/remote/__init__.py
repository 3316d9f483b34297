"""A `Backend` that asks a remote serving engine over HTTP instead of running torch here.

It speaks the OpenAI-compatible `/v1/completions` API (vLLM, llama.cpp's
llama-server, llama-cpp-python's server, TGI, Ollama) with `stream: true`,
and optionally llama.cpp's native `/infill`. What it sends is what the
local engine would compute on, as text:

- The prompt is laid out by `fim.build_prompt` (the same order logic as
  local: plain `header + prefix`, or the FIM template's PSM/SPM order) and
  rendered with the template tokens' text; the server's tokenizer turns it
  into tokens (servers parse special-token text in prompts).
- Stop rules: `stops.StopChecker` reads the streamed text here and closes
  the stream when it fires; the request's stop strings, max_tokens and
  sampling parameters are sent too, so the server stops early where it can.
- `cache_prompt: true` asks llama.cpp to keep the prompt's KV-cache in its
  slot; vLLM and SGLang reuse cached prefixes on their own once started
  with prefix caching (`--enable-prefix-caching`).

Cancellation: the request's `is_cancelled` is checked after every streamed
chunk and by a watcher every 20 ms; either closes the connection, which
makes the server abort the generation.

Failures: connection errors (and 5xx, 408, 429) are retried with
exponential backoff; other 4xx are not. A circuit breaker (`breaker`)
turns the backend "down" after repeated failures: it then answers at once
with an error (or from the optional local fallback) and probes the server
again after a cool-down, recovering by itself.

Privacy: nothing is sent before the first `complete`, and only to the
configured URL; the API key goes only into the Authorization header. The
server redacts secrets from the prompt parts before they reach any backend.

Modules: `backend` (RemoteBackend), `settings` (RemoteSettings, FIM template
choice), `prompt` (prompt text, whitespace healing), `stream` (reading the
streamed events), `http` (connections, SSE), `breaker` (the circuit breaker).
"""
from __future__ import annotations

from .backend import RemoteBackend
from .http import RemoteError
from .prompt import hold_back_space, render_prompt, unheal
from .settings import FIM_CHOICES, RemoteSettings, text_template

__all__ = ["FIM_CHOICES", "RemoteBackend", "RemoteError", "RemoteSettings", "hold_back_space", "render_prompt",
           "text_template", "unheal"]
