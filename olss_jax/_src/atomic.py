"""Atomic file replacement: a reader sees the old file or the new one, never a partial one.

Standard library only (so a crash-test child process can load it without JAX). The protocol:
write to a temporary file in the target's directory, flush, ``fsync``, ``os.replace`` it onto
the target (atomic on POSIX and on Windows for files on one volume), then ``fsync`` the
directory so the rename itself survives a power loss (where the platform supports it).
A writer killed at any moment leaves at most a stray temporary file whose name starts with
``.`` and contains ``.tmp-``; `is_temp_name` recognises them and loaders never treat them as
data.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import IO, Iterator

_TMP_MARK = ".tmp-"


def temp_name(target_name: str) -> str:
  """A unique hidden temporary name for ``target_name``: ``.{name}.tmp-{pid}-{token}``."""
  return f".{target_name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
  """True for names made by `temp_name` (stray files of an interrupted write)."""
  return name.startswith(".") and _TMP_MARK in name


def fsync_directory(directory: str | os.PathLike) -> None:
  """Flushes a directory entry to disk (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(os.fspath(directory), os.O_RDONLY)
  except OSError:  # e.g. Windows: directories cannot be opened; rename is durable enough.
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[IO[bytes]]:
  """Context manager yielding a binary file whose content replaces ``path`` atomically on exit.

  If the ``with`` body raises (including ``KeyboardInterrupt``), the temporary file is removed
  and ``path`` is untouched. If the process is killed, ``path`` is untouched and a stray
  temporary file (see `is_temp_name`) may remain.

  Args:
    path: the target file. Its directory must exist.
    fsync: flush file and directory to disk (turn off only for throwaway files).

  Yields:
    A writable binary file object.
  """
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  if not name:
    raise ValueError(f"path: expected a file path, got a directory {path!r}")
  if not os.path.isdir(directory):  # name the user's path, not the hidden temporary file
    raise FileNotFoundError(errno.ENOENT, f"No such directory {directory!r} to write into",
                            path)
  tmp = os.path.join(directory, temp_name(name))
  f = open(tmp, "xb")  # pylint: disable=consider-using-with
  try:
    yield f
    f.flush()
    if fsync:
      os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)
  except BaseException:
    f.close()
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  if fsync:
    fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
  """Writes ``data`` to ``path`` atomically (see `atomic_write`)."""
  with atomic_write(path, fsync=fsync) as f:
    f.write(data)


def remove_temp_files(directory: str | os.PathLike) -> list[str]:
  """Removes stray temporary files (see `is_temp_name`) in ``directory``; returns their names.

  Only call this while no other process writes into ``directory`` (the store holds a lock).
  """
  removed = []
  for name in sorted(os.listdir(directory)):
    if is_temp_name(name):
      with contextlib.suppress(OSError):
        os.remove(os.path.join(directory, name))
        removed.append(name)
  return removed
