"""Atomic file writes: everything steerlens writes appears whole or not at all (never pickle).

Temporaries are siblings named ``.{name}.tmp-{pid}-{host}-{random}``; starting a new write to
``name`` removes those of processes that are gone (killed runs), never those of a live one.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# pids are only checked for temporaries of this host (a shared filesystem may hold others')
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)


@contextmanager
def atomic_path(
    path: str | os.PathLike,
    *,
    directory: bool = False,
    check: Callable[[Path], None] | None = None,
    keep_existing: bool = False,
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write into; on success it replaces ``path``
    (a file or, with ``directory=True``, a directory), on failure it is removed.

    Everything written is fsynced before the rename, the parent directory after it. A directory
    replaces what is at ``path`` by an atomic exchange (the old tree is deleted afterwards) only
    if ``check(path)`` allows it: ``check`` runs before the temporary is made and again just before
    the swap, and raises to refuse (default: refuse anything but an empty directory).
    ``keep_existing``: if something is at ``path`` when the write completes, keep it and discard
    the temporary (for caches, where any complete copy will do).
    """
    path = Path(path)
    if directory and check is None and not keep_existing:
        check = _refuse_occupied
    if check is not None:
        check(path)
    with temp_sibling(path, directory=directory) as tmp:
        yield tmp
        _fsync_tree(tmp)
        if check is not None:
            check(path)
        if not directory:
            os.replace(tmp, path)  # atomic over an existing file
        elif not _publish_dir(tmp, path, keep_existing):
            return  # kept what was there; the temporary is removed on exit
        _fsync(path.parent)
        # after an exchange the old tree sits at ``tmp`` and is removed on exit


def occupied(path: str | os.PathLike) -> bool:
    """Whether something other than an empty directory is at ``path`` (a link counts)."""
    path = Path(path)
    return path.is_symlink() or path.exists() and not (path.is_dir() and not any(path.iterdir()))


def _refuse_occupied(path: Path) -> None:
    if occupied(path):
        raise FileExistsError(f"{path} already exists")


@contextmanager
def temp_sibling(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """A new empty file (or directory) next to ``path``, tagged with this process's pid and removed
    on exit; stale temporaries of ``path`` left by dead processes are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{_HOST}-{secrets.token_hex(6)}")
    if directory:
        os.mkdir(tmp, 0o777)  # modes follow the umask, as for any new file
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
    finally:
        _remove(tmp)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` whose writer (a process on this host) no longer runs;
    return what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)-([A-Za-z0-9]*)-[0-9a-f]+")
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        m = pattern.fullmatch(p.name)
        if m and m[2] == _HOST and not _alive(int(m[1])):
            _remove(p)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: never guess, keep the temporary
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _publish_dir(tmp: Path, path: Path, keep_existing: bool) -> bool:
    """Move directory ``tmp`` to ``path``. Something already there is exchanged with ``tmp``
    atomically (it then sits at ``tmp``), or kept with ``keep_existing`` (returns False)."""
    try:
        if _renameat2(tmp, path, _RENAME_NOREPLACE):
            return True
        if not path.exists() and not path.is_symlink():  # no renameat2: a (racy) plain rename
            os.rename(tmp, path)
            return True
    except FileExistsError:
        pass
    if keep_existing:
        return False
    if not _renameat2(tmp, path, _RENAME_EXCHANGE):
        # Fallback without renameat2 (not Linux, or a filesystem without it): two renames, so for
        # a moment nothing is at ``path``. The old tree's name is no ``.tmp-`` one, so a crash in
        # between leaves it for the user instead of to remove_stale_temps.
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{secrets.token_hex(6)}")
        os.rename(path, old)
        os.rename(tmp, path)
        os.rename(old, tmp)
    return True


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the platform or filesystem lacks it."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


@functools.cache
def _libc_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def _fsync_tree(p: Path) -> None:
    """fsync ``p``: a file, or a directory with every file and directory below it."""
    if p.is_dir():
        for root, _dirs, files in os.walk(p):
            for f in files:
                _fsync(Path(root) / f)
            _fsync(Path(root))
    else:
        _fsync(p)


def _fsync(p: Path) -> None:
    if p.is_dir() and os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (tensors and arrays as lists)."""
    write_text(path, json.dumps(obj, indent=1, default=_jsonable) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one JSON object per line to ``path`` atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a UTF-8 JSONL file (blank lines skipped); ``ValueError`` names
    ``file:line`` of anything else."""
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors with JSON-encoded metadata values (safetensors metadata is str -> str)."""
    from safetensors.torch import save_file

    meta = {k: json.dumps(v, default=_jsonable) for k, v in metadata.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON-decoded metadata of a file written by ``save_tensors``; ``ValueError``
    names the file when it is not a whole safetensors file or its metadata is not JSON."""
    with open_safetensors(path) as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: metadata {k!r} is not valid JSON ({e.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}: metadata {k!r} is JSON nested too deeply") from None
    return tensors, meta


@contextmanager
def open_safetensors(path: str | os.PathLike) -> Iterator[Any]:
    """``safetensors.safe_open`` (torch); a file that cannot be parsed or read raises
    ``ValueError`` naming it (a missing one ``FileNotFoundError``)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy arrays and scalars
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
