"""From a model name or path to weights, config and tokenizer in memory.

- `registry`: named models and where their files live (no torch).
- `loader`: `load_checkpoint(path)`, one entry point for a .gguf file or a Hugging Face folder.
- `gguf`, `hf`: the two file formats, each to canonical Hugging Face tensor names.

Nothing is imported here, so `loading.registry` stays cheap to import.
"""
