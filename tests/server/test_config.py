"""parse_config: invalid values fall back to defaults with a warning naming the key."""
from __future__ import annotations

import pytest

from keystroke.server.config import CLIENT_KEYS, Config, engine_changed, parse_config

DEFAULT = Config()


def test_valid_settings_are_applied():
    cfg, warnings = parse_config({
        "model": "smollm2-135m", "device": "cpu", "threads": 2, "maxTokens": 32, "temperature": 0.5,
        "candidates": 4, "debounceMs": 0, "contextBudget": 512, "enabledLanguages": ["python", "rust"],
        "cacheDir": "/tmp/x", "cacheSizeMb": 10, "maxDocumentBytes": 5000, "completionItems": "ON",
        "enabled": False}, DEFAULT)
    assert warnings == []
    assert cfg == Config(model="smollm2-135m", device="cpu", threads=2, max_tokens=32, temperature=0.5,
                         candidates=4, debounce_ms=0, context_budget=512, enabled_languages=("python", "rust"),
                         cache_dir="/tmp/x", cache_size_mb=10, max_document_bytes=5000, completion_items="on",
                         enabled=False)
    assert cfg.language_enabled("rust") and not cfg.language_enabled("go")


@pytest.mark.parametrize("key,value", [
    ("maxTokens", -5), ("maxTokens", "64"), ("maxTokens", 1.5), ("maxTokens", True),
    ("temperature", float("nan")), ("temperature", 9), ("candidates", 0), ("debounceMs", "50"), ("debounceMaxMs", -1), ("speculate", 1), ("reuseInFlight", "yes"),
    ("contextBudget", []), ("enabledLanguages", "python"), ("enabledLanguages", [1]),
    ("completionItems", "sometimes"), ("enabled", "yes"), ("model", ""), ("model", 3),
    ("device", "tpu"), ("threads", 0), ("cacheSizeMb", -1), ("maxDocumentBytes", 0), ("cacheDir", "")])
def test_invalid_value_uses_default_and_names_key(key, value):
    previous = Config(max_tokens=7, temperature=0.3, candidates=5, debounce_ms=9, context_budget=100,
                      enabled_languages=("c",), completion_items="off", enabled=False, model="m",
                      device="auto", threads=3, cache_size_mb=5, max_document_bytes=9, cache_dir="/d")
    cfg, warnings = parse_config({key: value}, previous)
    assert len(warnings) == 1 and key in warnings[0]
    field = CLIENT_KEYS[key]
    assert getattr(cfg, field) == getattr(DEFAULT, field)
    # every other field keeps its previous value
    for other in CLIENT_KEYS.values():
        if other != field:
            assert getattr(cfg, other) == getattr(previous, other)


def test_unknown_keys_warn_and_are_ignored():
    cfg, warnings = parse_config({"bogus": 1, "maxTokens": 12, 5: "x"}, DEFAULT)
    assert cfg.max_tokens == 12
    assert len(warnings) == 2 and "bogus" in warnings[0] and "'5'" in warnings[1]


def test_absent_keys_keep_previous_values_and_section_is_unwrapped():
    prev = Config(max_tokens=10, candidates=2)
    cfg, warnings = parse_config({"keystroke": {"candidates": 3}}, prev)
    assert (cfg.max_tokens, cfg.candidates, warnings) == (10, 3, [])


@pytest.mark.parametrize("raw", [None, {}])
def test_nothing_changes_nothing(raw):
    assert parse_config(raw, Config(max_tokens=5)) == (Config(max_tokens=5), [])


@pytest.mark.parametrize("raw", [[1, 2], "maxTokens=3", 7, True])
def test_non_object_settings_warn_and_keep_previous(raw):
    cfg, warnings = parse_config(raw, Config(max_tokens=5))
    assert cfg == Config(max_tokens=5) and len(warnings) == 1 and "expected an object" in warnings[0]


def test_token_key_is_not_configuration_and_not_echoed():
    cfg, warnings = parse_config({"token": "s3cret-value"}, DEFAULT)
    assert cfg == DEFAULT and warnings == []


def test_long_invalid_values_are_shortened_in_warnings():
    _, warnings = parse_config({"model": ["x" * 10_000]}, DEFAULT)
    assert len(warnings[0]) < 300


def test_engine_changed_only_for_engine_fields():
    assert engine_changed(DEFAULT, Config(model="other"))
    assert engine_changed(DEFAULT, Config(cache_size_mb=1))
    assert not engine_changed(DEFAULT, Config(max_tokens=1, enabled=False))


def test_an_empty_lua_table_sent_as_a_list_is_an_empty_object():
    # Neovim serializes an empty Lua table as [] (an editor found this)
    for raw in ([], {"keystroke": []}):
        cfg, warnings = parse_config(raw, Config())
        assert cfg == Config() and warnings == []
