"""Shared by the file-format tests: the digests as the file format's docstring (`_src/files.py`)
defines them, written independently of the module (the oracle the files are checked against),
and the DDIM teacher the stored trajectories carry."""
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

import olss_jax as oj

ALPHAS = np.asarray(oj.scaled_linear_alphas_cumprod(), np.float64)


def ddim_teacher(k, ts_dtype=np.int32, config=None, *, offset=0.5):
  """A k-step DDIM `Teacher` of Stable Diffusion's table, its timesteps stored as ``ts_dtype``
  (float timesteps moved by ``offset`` so that they are not whole) and float64 levels."""
  timesteps = oj.baselines.ddim_timesteps(k)
  levels = np.concatenate([ALPHAS[timesteps], [1.0]])
  if np.dtype(ts_dtype).kind == "f":
    timesteps = (timesteps + offset).astype(ts_dtype)
  with jax.enable_x64(True):
    return oj.Teacher(timesteps, jnp.asarray(levels, jnp.float64), "ddim", config)


def spec_digests(header, data):
  """``(header_sha256, sha256)`` of a version-2 file's JSON header (dict) and data bytes."""
  def canon(meta):
    return json.dumps(dict(header, __metadata__=meta), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")

  h0 = {k: v for k, v in header["__metadata__"].items() if k not in ("sha256", "header_sha256")}
  sha256 = hashlib.sha256(hashlib.sha256(canon(h0)).digest() + data).hexdigest()
  header_sha256 = hashlib.sha256(canon(dict(h0, sha256=sha256))).hexdigest()
  return header_sha256, sha256
