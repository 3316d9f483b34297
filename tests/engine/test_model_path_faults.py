"""A model path that is not a file or folder fails fast, never blocks (issue #15, item 10).

A FIFO given as `settings.model` used to hold the engine worker forever:
opening it waits for a writer that never comes.
"""
from __future__ import annotations

import faulthandler
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from keystroke.engine import registry
from keystroke.engine.errors import ModelError
from keystroke.engine.loading.loader import load_checkpoint
from tests.tiny import make_tiny_model_dir

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


def _unblock(fifo: Path) -> None:
    """Let a reader stuck opening `fifo` go (only matters when the fix is missing)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def fails_fast(fn, path: Path, fifos: tuple[Path, ...] = ()) -> ModelError:
    """Run fn(path) in a thread: it must raise ModelError within 1 s.

    A loader blocked inside native code (safetensors opening a FIFO) may hold
    the GIL, and then no Python thread can time it out: a watchdog ends the
    whole run with a traceback instead of letting it hang.
    """
    outcome: list[BaseException | None] = []

    def run():
        try:
            fn(path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - judged below
            outcome.append(exc)

    faulthandler.dump_traceback_later(30, exit=True)
    try:
        t0 = time.monotonic()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=1.0)
        took = time.monotonic() - t0
        for fifo in fifos:
            _unblock(fifo)
        worker.join(timeout=5.0)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert outcome, f"{fn.__name__}({path}) still blocked after {took:.1f} s"
    assert took < 1.0, f"{fn.__name__}({path}) took {took:.1f} s"
    exc = outcome[0]
    assert isinstance(exc, ModelError), f"{fn.__name__}({path}) gave {exc!r}, not a ModelError"
    assert exc.problem and exc.hint
    return exc


@pytest.fixture
def short_tmp():
    """A short directory: a unix socket path must fit in about 100 bytes."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ks-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", ["model.gguf", "model"])
@pytest.mark.parametrize("fn", [load_checkpoint, registry.resolve], ids=["load", "resolve"])
def test_fifo(tmp_path, name, fn):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    assert "FIFO" in str(fails_fast(fn, fifo, (fifo,)))


def test_fifo_behind_a_symlink(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "model.gguf"
    link.symlink_to(fifo)
    assert "FIFO" in str(fails_fast(load_checkpoint, link, (fifo,)))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("fn", [load_checkpoint, registry.resolve], ids=["load", "resolve"])
def test_dev_zero(tmp_path, fn):
    assert "character device" in str(fails_fast(fn, Path("/dev/zero")))
    link = tmp_path / "model.gguf"
    link.symlink_to("/dev/zero")
    assert "character device" in str(fails_fast(fn, link))


@pytest.mark.parametrize("fn", [load_checkpoint, registry.resolve], ids=["load", "resolve"])
def test_socket_file(short_tmp, fn):
    path = short_tmp / "model.gguf"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        assert "socket" in str(fails_fast(fn, path))
    finally:
        sock.close()


def test_directory_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    assert "config.json" in str(fails_fast(load_checkpoint, tmp_path))


def test_folder_whose_only_gguf_is_a_fifo(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert "FIFO" in str(fails_fast(load_checkpoint, tmp_path, (fifo,)))


@pytest.mark.parametrize("member", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_hf_folder_with_a_fifo_inside(tmp_path, member):
    folder = make_tiny_model_dir(tmp_path / "m", "llama")
    fifo = folder / member
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    assert "FIFO" in str(fails_fast(load_checkpoint, folder, (fifo,)))
