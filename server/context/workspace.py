"""Find the workspace files that the current file imports, and read them safely.

Only local code is followed: relative imports, modules of the same package,
`#include "x.h"`, `mod x;`, same-package Java classes and same-directory Go
files. Files are read only from under the workspace root, up to a size cap,
and never when they are .env-style files.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..secrets import is_env_file
from .types import Import

_JS_EXTS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")
_read_cache: dict[Path, tuple[tuple[int, int], str | None]] = {}


def read_workspace_file(path: Path, root: Path | None, max_bytes: int) -> str | None:
    """The text of `path` if it lies under `root`, is small enough and is text; else None."""
    if root is None:
        return None
    try:
        real = path.resolve()
        if not real.is_relative_to(root.resolve()) or is_env_file(real) or not real.is_file():
            return None
        st = real.stat()
        key = (st.st_mtime_ns, st.st_size)
        hit = _read_cache.get(real)
        if hit is not None and hit[0] == key:
            return hit[1]
        text: str | None = None
        if st.st_size <= max_bytes:
            data = real.read_bytes()
            if b"\0" not in data[:8192]:
                text = data.decode("utf-8", "replace")
        if len(_read_cache) > 512:
            _read_cache.clear()
        _read_cache[real] = (key, text)
        return text
    except OSError:
        return None


def _first_file(candidates: list[Path]) -> list[Path]:
    for c in candidates:
        if c.is_file():
            return [c]
    return []


def _python_roots(doc_path: Path, root: Path) -> list[Path]:
    """Where absolute imports may start: the root, root/src, and the top of the current package."""
    roots = [root, root / "src"]
    d = doc_path.parent
    while (d / "__init__.py").is_file() and d != root and root in d.parents:
        d = d.parent
    roots.append(d)
    roots.append(doc_path.parent)
    seen, out = set(), []
    for r in roots:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def _python_module_file(base: Path, dotted: str) -> list[Path]:
    rel = Path(*dotted.split(".")) if dotted else Path()
    return _first_file([base / rel.with_suffix(".py") if dotted else base / "__init__.py",
                        base / rel / "__init__.py", base / rel.with_suffix(".pyi") if dotted else base / "__init__.pyi"])


def resolve_python(module: str, doc_path: Path, root: Path, names: tuple = ()) -> dict[str | None, Path]:
    """Files for `module` (absolute or relative); also submodules imported by name.

    Returns {None: module file} plus {name: file} for names that are modules
    themselves (`from pkg import mod`).
    """
    found: dict[str | None, Path] = {}
    if module.startswith("."):
        dots = len(module) - len(module.lstrip("."))
        base = doc_path.parent
        for _ in range(dots - 1):
            base = base.parent
        bases = [base]
        dotted = module[dots:]
    else:
        bases = _python_roots(doc_path, root)
        dotted = module
    for base in bases:
        files = _python_module_file(base, dotted)
        if files:
            found[None] = files[0]
        pkg_dir = base / Path(*dotted.split(".")) if dotted else base
        for alias, original in names:
            sub = _first_file([pkg_dir / f"{original or alias}.py", pkg_dir / (original or alias) / "__init__.py"])
            if sub:
                found[alias] = sub[0]
        if found:
            break
    return found


def resolve_import(imp: Import, language: str, doc_path: Path, root: Path, text: str = "") -> dict[str | None, Path]:
    """Local files an import refers to: {None: the module's file, name: a file imported by name}."""
    module = imp.module
    if not module:
        return {}
    here = doc_path.parent
    if language == "python":
        return resolve_python(module, doc_path, root, imp.names)
    if language in ("javascript", "typescript", "tsx"):
        if not module.startswith("."):
            return {}
        base = (here / module)
        cands = [base] + [Path(str(base) + e) for e in _JS_EXTS] + [base / ("index" + e) for e in _JS_EXTS]
        if base.suffix in (".js", ".mjs", ".cjs", ".jsx"):  # TypeScript sources imported as .js
            stem = base.with_suffix("")
            cands += [Path(str(stem) + e) for e in (".ts", ".tsx")]
        return {None: f for f in _first_file(cands)}
    if language in ("c", "cpp"):
        if module.startswith("<"):
            return {}
        cands = [here / module, root / module, root / "include" / module, root / "src" / module]
        return {None: f for f in _first_file(cands)}
    if language == "rust":
        if module.startswith("mod::"):
            name = module[5:]
            return {None: f for f in _first_file([here / f"{name}.rs", here / name / "mod.rs"])}
        parts = module.split("::")
        if parts[0] == "crate":
            src = next((p for p in [here, *here.parents] if (p / "Cargo.toml").is_file()), root) / "src"
            base = src
        elif parts[0] == "super":
            base = here.parent if doc_path.stem in ("mod", "lib", "main") else here
        elif parts[0] == "self":
            base = here if doc_path.stem in ("mod", "lib", "main") else here / doc_path.stem
        else:
            return {}
        rel = Path(*parts[1:]) if len(parts) > 1 else None
        if rel is None:
            cands = [base / "lib.rs", base / "main.rs", base / "mod.rs"]
        else:
            cands = [base / rel.with_suffix(".rs"), base / rel / "mod.rs"]
        return {None: f for f in _first_file(cands)}
    if language == "java":
        src_root = _java_source_root(doc_path, text)
        if src_root is None:
            return {}
        rel = Path(*module.split("."))
        return {None: f for f in _first_file([src_root / rel.with_suffix(".java")])}
    return {}


def _java_source_root(doc_path: Path, text: str) -> Path | None:
    """The folder that holds the package tree, found from the file's `package` line."""
    for line in text[:4096].split("\n"):
        line = line.strip()
        if line.startswith("package ") and line.endswith(";"):
            parts = line[8:-1].strip().split(".")
            d = doc_path.parent
            for part in reversed(parts):
                if d.name != part:
                    return None
                d = d.parent
            return d
    return doc_path.parent


def same_package_files(doc_path: Path, language: str, root: Path, limit: int = 16) -> list[Path]:
    """Go: files of the same package (the same folder) share all their names."""
    if language != "go":
        return []
    try:
        entries = sorted(os.scandir(doc_path.parent), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        if e.name.endswith(".go") and e.name != doc_path.name and e.is_file():
            out.append(Path(e.path))
            if len(out) >= limit:
                break
    return out
