"""Publishing a candidate as the next version of a model, atomically.

The candidate is built in a hidden directory under the model's base path (same filesystem), so
publishing is one ``rename`` to the next free numeric version after every file and directory has
been fsynced: a poller (TF Serving, the devserver) sees no version or a complete one, never a
partial directory. TF Serving ignores non-numeric directories, and ``.tfwarden-*`` ones left by
a crash are removed by the next run. Each published version carries ``tfwarden-provenance.json``
(source version, method, parameters, metrics, tool versions, sha256 of every file); TFLite
versions also an edge ``manifest.json``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tfwarden.core.errors import PublishError

PROVENANCE = "tfwarden-provenance.json"
MANIFEST = "manifest.json"
WORK_PREFIX = ".tfwarden-"


def versions(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def work_dir(base: Path) -> Path:
    """A fresh hidden directory for building a candidate next to the versions."""
    for stale in base.glob(f"{WORK_PREFIX}*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 24 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=base))


def sha256_files(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[str(path.relative_to(root))] = digest.hexdigest()
    return out


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def publish(candidate: Path, base: Path, provenance: dict[str, Any],
            manifest: dict[str, Any] | None = None) -> int:
    """Move ``candidate`` (a directory under ``base``) to the next free version; return it."""
    if candidate.parent.resolve() != base.resolve():
        raise PublishError(f"{candidate}: must be built inside {base} (same filesystem)")
    provenance = {**provenance, "sha256": sha256_files(candidate)}
    if manifest is not None:
        tflite = candidate / "model.tflite"
        write_json(candidate / MANIFEST, {**manifest, "file": "model.tflite",
                                          "size_bytes": tflite.stat().st_size,
                                          "sha256": provenance["sha256"]["model.tflite"]})
    write_json(candidate / PROVENANCE, provenance)
    _fsync_tree(candidate)
    for _ in range(100):
        version = (max(versions(base), default=0)) + 1
        target = base / str(version)
        try:
            rename_noreplace(candidate, target)  # fails if a version appeared meanwhile
        except FileExistsError:
            continue
        fd = os.open(base, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return version
    raise PublishError(f"{base}: no free version number after 100 tries")


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename, refusing (FileExistsError) when ``target`` exists, even as an empty directory
    (plain rename replaces one): Linux renameat2(RENAME_NOREPLACE); where the filesystem or
    libc lacks it, a check then a rename."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, noreplace = -100, 1
        if renameat2(at_fdcwd, bytes(source), at_fdcwd, bytes(target), noreplace) == 0:
            return
        error = ctypes.get_errno()
        if error == errno.EEXIST:
            raise FileExistsError(error, os.strerror(error), str(target))
        if error not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(error, os.strerror(error), str(target))
    if target.exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def provenance_of(version_dir: Path) -> dict[str, Any] | None:
    path = version_dir / PROVENANCE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def optimized_from(base: Path, source_version: int, method: str) -> int | None:
    """A version already published from ``source_version`` with ``method``, if any."""
    for version in versions(base):
        data = provenance_of(base / str(version))
        if data and data.get("source_version") == source_version and data.get("method") == method:
            return version
    return None
