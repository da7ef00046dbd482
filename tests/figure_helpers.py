"""Shared by the figure tests: a PNG's size read from its header (no image library)."""
import struct


def png_size(path) -> tuple[int, int]:
  """(width, height) of the PNG at ``path``; fails the test if it is not a PNG."""
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
  return struct.unpack(">II", head[16:24])
