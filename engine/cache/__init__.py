"""What the engine keeps between requests so it computes less.

- `kvcache`: `KVCache`, the K/V tensors of one token sequence, outside the model.
- `kvstore`: `KVStore`, one KV-cache per document, reused by longest token prefix, in memory and on disk.
- `responses`: `ResponseCache`, finished answers keyed by the exact prompt and settings.

Nothing is imported here: the modules load torch or numpy, so import them by name.
"""
