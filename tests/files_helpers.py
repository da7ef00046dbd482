"""Shared by the file-format tests: the digests as the file format's docstring (`_src/files.py`)
defines them, written independently of the module (the oracle the files are checked against)."""
import hashlib
import json


def spec_digests(header, data):
  """``(header_sha256, sha256)`` of a version-2 file's JSON header (dict) and data bytes."""
  def canon(meta):
    return json.dumps(dict(header, __metadata__=meta), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")

  h0 = {k: v for k, v in header["__metadata__"].items() if k not in ("sha256", "header_sha256")}
  sha256 = hashlib.sha256(hashlib.sha256(canon(h0)).digest() + data).hexdigest()
  header_sha256 = hashlib.sha256(canon(dict(h0, sha256=sha256))).hexdigest()
  return header_sha256, sha256
