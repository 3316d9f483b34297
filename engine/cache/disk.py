"""diskcache, hardened against hostile or damaged cache files.

Both caches (KV entries, responses) keep their disk part in a diskcache
folder. What is in that folder may be damaged (a crash, a full disk) or
written by someone else:

- a corrupt `cache.db` is set aside (renamed) and an empty one started, or
  the cache goes memory-only with one warning (`open_disk_cache`,
  `recover_disk_cache`);
- values are never unpickled and never read from outside the folder
  (`SafeDisk`): a pickled row would run code, a crafted file name would read
  any file. Such a row is a miss.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import diskcache

log = logging.getLogger("keystroke.cache")


class SafeDisk(diskcache.Disk):
    """diskcache's Disk without pickle: only raw, bytes and text values, only files inside the folder."""

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise OSError("a pickled value in the cache: refused")
        if filename is not None:
            inside = os.path.realpath(os.path.join(self._directory, filename))
            if os.path.commonpath([inside, os.path.realpath(self._directory)]) != os.path.realpath(self._directory):
                raise OSError("a cache value outside the cache folder: refused")
        return super().fetch(mode, filename, value, read)

    def get(self, key, raw):
        if not raw:
            raise OSError("a pickled key in the cache: refused")
        return super().get(key, raw)


_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_corruption(exc: BaseException) -> bool:
    """True for sqlite's "database disk image is malformed" and "file is not a database".

    Not for a locked or full database (OperationalError): waiting, or doing
    without, is right for those; only a corrupt file is worth replacing.
    """
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def _db_problem(db: Path) -> str | None:
    """What sqlite's quick_check finds wrong with a database file; None when sound, absent or busy."""
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(str(db), timeout=5)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) if is_corruption(exc) else None  # locked: no verdict; diskcache will wait
    if rows == [("ok",)]:
        return None
    return str(rows[0][0]).strip().splitlines()[-1] if rows else "quick_check returned nothing"


def _set_aside(directory: Path) -> Path:
    """Rename cache.db (and its -wal, -shm) to cache.db.corrupt-<time>, keeping only the latest such copy.

    The value files in diskcache's two-level subfolders belonged to the old
    database alone (nothing can find them any more), so they are deleted.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for old in directory.glob("cache.db*.corrupt-*"):
        old.unlink(missing_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = directory / f"cache.db{suffix}"
        if src.exists():
            os.replace(src, directory / f"cache.db{suffix}.corrupt-{stamp}")
    for child in directory.iterdir():
        if child.is_dir() and re.fullmatch(r"[0-9a-f]{2}", child.name):
            shutil.rmtree(child, ignore_errors=True)
    return directory / f"cache.db.corrupt-{stamp}"


def _fresh_disk_cache(directory: Path, what: str, problem: str, settings: dict, logger: logging.Logger):
    """Set a corrupt database aside and open an empty one; None (memory only) when that fails too."""
    try:
        aside = _set_aside(directory)
        disk = diskcache.Cache(str(directory), disk=SafeDisk, **settings)
    except Exception as exc:  # noqa: BLE001
        logger.warning("%s database %s is corrupt (%s) and could not be replaced (%s); keeping it in memory only",
                       what, directory / "cache.db", problem, exc)
        return None
    logger.warning("%s database %s is corrupt (%s); moved it to %s and started an empty one",
                   what, directory / "cache.db", problem, aside.name)
    return disk


def open_disk_cache(directory: Path, what: str, logger: logging.Logger = log, **settings):
    """A diskcache.Cache in `directory` that sqlite finds sound, or None (memory only, one warning).

    A corrupt database is replaced by an empty one (see `_set_aside`) rather
    than used: its reads fail with "database disk image is malformed".
    """
    directory = Path(directory)
    try:
        problem = _db_problem(directory / "cache.db")
        if problem is None:
            try:
                return diskcache.Cache(str(directory), disk=SafeDisk, **settings)
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                problem = str(exc)
    except Exception as exc:  # noqa: BLE001
        logger.warning("%s directory %s cannot be used (%s); keeping it in memory only", what, directory, exc)
        return None
    return _fresh_disk_cache(directory, what, problem, settings, logger)


def recover_disk_cache(disk, what: str, exc: BaseException, logger: logging.Logger = log, **settings):
    """After `exc` showed that `disk`'s database is corrupt: an empty replacement, or None (memory only)."""
    try:
        disk.close()
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass
    return _fresh_disk_cache(Path(disk.directory), what, str(exc), settings, logger)
