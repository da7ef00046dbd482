"""The paper's figures as matplotlib figures and PNG files (Agg backend, no display needed).

Each function returns the `matplotlib.figure.Figure` and, given ``path``, writes it as a PNG
of exactly ``figsize * dpi`` pixels. Inputs are host or device arrays; nothing here runs a
model (see `olss_jax._src.workbench.paper_figures` for the end-to-end pipeline).
"""
from __future__ import annotations

import io
import math
import os
from typing import Mapping, Sequence

import numpy as np

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _plt():
  import matplotlib  # pylint: disable=import-outside-toplevel
  if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _new_figure(figsize, dpi, **kwargs):
  """A figure not tracked by pyplot (no leaks in loops) that notebooks still display."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  _plt()
  fig = Figure(figsize=figsize, dpi=dpi, layout="constrained", **kwargs)

  def repr_png() -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()

  fig._repr_png_ = repr_png  # pylint: disable=protected-access  (IPython's display hook)
  return fig


def _finish(fig, path, dpi):
  if path is not None:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
      os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
  return fig


def _check_figsize(figsize, dpi):
  if len(figsize) != 2 or min(figsize) <= 0 or dpi <= 0:
    raise ValueError(f"figsize, dpi: expected two positive inches and a positive dpi, got "
                     f"{figsize} and {dpi}")


# ---------------------------------------------------------------------------------------------
# Figure 2: correlation of the teacher's states and model outputs.


def correlation_matrix(traj, *, num_points: int = 40, max_images: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Correlation coefficients between teacher states and model outputs (paper Figure 2).

  The variables are the states x_T, ..., x_0 and the outputs e_T, ..., e_1 at ``num_points``
  evenly spaced teacher steps each; per image, each variable is the flattened (D,) vector and
  the coefficient is Pearson's over its D elements; the matrix is averaged over images.

  Args:
    traj: the teacher `Trajectory` (K steps, B images).
    num_points: P, states and outputs shown per block.
    max_images: average over at most this many images.

  Returns:
    (corr (2P, 2P) float64 with rows [x at the P steps, e at the P steps], steps (P,) int
    teacher-step indices: state k is the input of the k-th model call, output k its result).
  """
  k = traj.num_teacher_steps
  if num_points < 2:
    raise ValueError(f"num_points: expected >= 2, got {num_points}")
  steps = np.unique(np.linspace(0, k - 1, min(num_points, k)).round().astype(int))
  states = np.asarray(traj.states)[steps]             # (P, B, ...)
  outputs = np.asarray(traj.model_outputs)[steps]     # (P, B, ...)
  b = min(traj.batch_size, max(1, int(max_images)))
  corr = np.zeros((2 * steps.size, 2 * steps.size))
  for i in range(b):
    v = np.concatenate([states[:, i].reshape(steps.size, -1),
                        outputs[:, i].reshape(steps.size, -1)]).astype(np.float64)
    v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norm > 0, norm, 1.0)
    corr += v @ v.T
  return corr / b, steps


def correlation_figure(traj, *, num_points: int = 40, max_images: int = 8, path=None,
                       figsize=(6.4, 5.4), dpi: int = 100):
  """Heat map of the correlation of teacher states and model outputs (paper Figure 2).

  Args:
    traj: the teacher `Trajectory`.
    num_points: steps shown per block (states and outputs).
    max_images: images averaged.
    path: write a PNG here when given.
    figsize, dpi: the PNG is ``figsize * dpi`` pixels.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  _check_figsize(figsize, dpi)
  corr, steps = correlation_matrix(traj, num_points=num_points, max_images=max_images)
  p = steps.size
  timesteps = np.asarray(traj.timesteps)[steps]
  fig = _new_figure(figsize, dpi)
  ax = fig.add_subplot()
  image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
  fig.colorbar(image, ax=ax, label="correlation coefficient", shrink=0.85)
  span = f"t = {timesteps[0]}$\\to${timesteps[-1]}"
  ax.set_xticks([(p - 1) / 2, p + (p - 1) / 2], [f"states $x_t$\n{span}", f"outputs $e_t$\n{span}"])
  ax.set_yticks([(p - 1) / 2, p + (p - 1) / 2], ["$x_t$", "$e_t$"])
  ax.axhline(p - 0.5, color="k", lw=0.8)
  ax.axvline(p - 0.5, color="k", lw=0.8)
  ax.set_xlabel("teacher variables, each block from noisy (t large) to clean")
  ax.set_ylabel("states (top) and model outputs (bottom)")
  ax.set_title(f"Correlation along the {traj.num_teacher_steps}-step teacher (paper Fig. 2)")
  return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------------
# Figure 5: generation paths projected by PCA.


def _pca_basis(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  mean = points.mean(axis=0)
  _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
  explained = s ** 2 / max(float(np.sum(s ** 2)), 1e-300)
  return mean, vt[:2], explained[:2]


def generation_paths_figure(histories: Mapping[str, np.ndarray], teacher_states=None, *,
                            samples: Sequence[int] = (0, 1, 2), path=None,
                            figsize=(11.0, 4.0), dpi: int = 100):
  """Generation paths of several schedulers, projected to 2-D by PCA (paper Figure 5).

  One panel per sample: the teacher's states (a thin grey curve) and every scheduler's
  states x_{t(0)}, ..., x_{t(n)} (markers) in the plane of the first two principal components
  of all the points of that sample.

  Args:
    histories: ``{name: (n + 1, B, ...) states}`` from `olss_jax.sample_states`.
    teacher_states: (K + 1, B, ...) the teacher's states on the same noises (`Trajectory.states`).
    samples: which of the B noises to draw (one panel each).
    path: write a PNG here when given.
    figsize, dpi: the PNG is ``figsize * dpi`` pixels.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  _check_figsize(figsize, dpi)
  if not histories:
    raise ValueError("histories: expected at least one scheduler's states")
  hist = {name: np.asarray(h, np.float64) for name, h in histories.items()}
  batch = next(iter(hist.values())).shape[1]
  samples = [int(s) for s in samples if 0 <= int(s) < batch] or [0]
  fig = _new_figure(figsize, dpi)
  axes = fig.subplots(1, len(samples), squeeze=False)[0]
  teacher = None if teacher_states is None else np.asarray(teacher_states, np.float64)
  for ax, s in zip(axes, samples):
    parts = [h[:, s].reshape(h.shape[0], -1) for h in hist.values()]
    if teacher is not None:
      parts.append(teacher[:, s].reshape(teacher.shape[0], -1))
    mean, basis, explained = _pca_basis(np.concatenate(parts))
    if teacher is not None:
      t2 = (teacher[:, s].reshape(teacher.shape[0], -1) - mean) @ basis.T
      ax.plot(t2[:, 0], t2[:, 1], color="0.45", lw=1.5, label=f"teacher ({teacher.shape[0] - 1} steps)",
              zorder=1)
      ax.scatter(t2[-1, 0], t2[-1, 1], marker="*", s=160, color="0.2", zorder=4)
    for c, (name, h) in enumerate(hist.items()):
      p2 = (h[:, s].reshape(h.shape[0], -1) - mean) @ basis.T
      ax.plot(p2[:, 0], p2[:, 1], "-o", ms=4, lw=1, color=_COLORS[c % len(_COLORS)],
              label=f"{name} ({h.shape[0] - 1} steps)", zorder=2 + c * 0.01)
    first = next(iter(hist.values()))[0, s].reshape(-1)
    p0 = (first - mean) @ basis.T
    ax.scatter(p0[0], p0[1], marker="s", s=60, facecolor="white", edgecolor="k", zorder=5,
               label="start $x_T$")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}%)" if explained.size > 1 else "PC 2")
    ax.set_title(f"noise {s}")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc="best")
  fig.suptitle("Generation paths projected by PCA (paper Fig. 5); the star marks the teacher's "
               "final sample")
  return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------------
# Figure 4: error against the number of steps.


def error_vs_steps_figure(comparison, *, metric: str = "rmse", path=None, log_y: bool = True,
                          figsize=(6.4, 4.4), dpi: int = 100):
  """Error against the number of steps, one line per scheduler (paper Figure 4).

  Args:
    comparison: a `Comparison` from `run_comparison` (its rows: method, steps, the metric
      and, for RMSE, ``rmse_lo``/``rmse_hi`` 95% intervals drawn as error bars), or a
      sequence of such row dicts.
    metric: the row key plotted on the y axis.
    path: write a PNG here when given.
    log_y: logarithmic y axis.
    figsize, dpi: the PNG is ``figsize * dpi`` pixels.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  _check_figsize(figsize, dpi)
  rows = list(getattr(comparison, "rows", comparison))
  if not rows:
    raise ValueError("comparison: holds no rows")
  if any(metric not in r for r in rows):
    raise ValueError(f"metric: {metric!r} is not in every row (keys: {sorted(rows[0])})")
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig = _new_figure(figsize, dpi)
  ax = fig.add_subplot()
  for c, m in enumerate(methods):
    mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["steps"])
    x = np.array([r["steps"] for r in mine])
    y = np.array([r[metric] for r in mine], np.float64)
    style = dict(color=_COLORS[c % len(_COLORS)], marker=_MARKERS[c % len(_MARKERS)], ms=5,
                 capsize=3, lw=2.4 if m.startswith("olss") else 1.2,
                 ls="--" if c % 2 else "-", label=m)  # dashes keep overlapping lines visible
    if metric == "rmse" and all("rmse_lo" in r for r in mine):
      err = np.array([[r[metric] - r["rmse_lo"] for r in mine], [r["rmse_hi"] - r[metric] for r in mine]])
      ax.errorbar(x, y, yerr=np.maximum(err, 0), **style)
    else:
      ax.errorbar(x, y, **style)
  if log_y and all(r[metric] > 0 for r in rows):
    ax.set_yscale("log")
  steps = sorted({r["steps"] for r in rows})
  ax.set_xticks(steps)
  ax.set_xlabel("number of steps n (model calls)")
  ax.set_ylabel({"rmse": "RMSE to the teacher's sample"}.get(metric, metric))
  ax.set_title("Error against steps (paper Fig. 4); bars: 95% interval")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, ncols=2)
  return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------------
# What OLSS learned: weight matrices side by side.


def weights_figure(schedules: Mapping[str, object], *, path=None, annotate: bool | None = None,
                   figsize=None, dpi: int = 100):
  """Heat maps of schedules' weight matrices, side by side on one colour scale.

  Row i of a `Schedule`'s (n, n + 1) weights gives x_{i+1} over [x_T, e_1, ..., e_n]
  (paper Eq. 12); entries above the diagonal are zero by construction and left blank. Put
  the fitted OLSS schedule beside DDIM's of the same n to see what the fit learned.

  Args:
    schedules: ``{name: Schedule}``, all with the same n is easiest to read.
    path: write a PNG here when given.
    annotate: print each weight in its cell (default: when n <= 10).
    figsize: default (4.2 per panel + 1, 4.2) inches.
    dpi: the PNG is ``figsize * dpi`` pixels.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  from matplotlib.colors import TwoSlopeNorm  # pylint: disable=import-outside-toplevel
  if not schedules:
    raise ValueError("schedules: expected at least one schedule")
  figsize = figsize or (4.2 * len(schedules) + 1.0, 4.2)
  _check_figsize(figsize, dpi)
  mats = {}
  for name, sched in schedules.items():
    w = np.asarray(sched.weights, np.float64)
    mask = np.arange(w.shape[1])[None, :] > np.arange(w.shape[0])[:, None] + 1
    mats[name] = (np.ma.masked_array(w, mask), np.asarray(sched.timesteps))
  vmax = max(float(np.abs(m).max()) for m, _ in mats.values()) or 1.0
  norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
  fig = _new_figure(figsize, dpi)
  axes = fig.subplots(1, len(mats), squeeze=False)[0]
  image = None
  for ax, (name, (w, ts)) in zip(axes, mats.items()):
    n = w.shape[0]
    image = ax.imshow(w, cmap="RdBu_r", norm=norm, interpolation="nearest")
    cols = ["$x_T$"] + [f"$e_{{{j + 1}}}$" for j in range(n)]
    stride = max(1, math.ceil((n + 1) / 12))
    ax.set_xticks(range(0, n + 1, stride), cols[::stride])
    ax.set_yticks(range(0, n, stride), [f"{i + 1} (t={int(ts[i])})" for i in range(0, n, stride)])
    ax.set_xlabel("basis: starting noise and model outputs")
    ax.set_ylabel("step i (model call at timestep t)")
    ax.set_title(name)
    if annotate if annotate is not None else n <= 10:
      for i in range(n):
        for j in range(i + 2):
          ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=6,
                  color="white" if abs(w[i, j]) > 0.6 * vmax else "black")
  fig.colorbar(image, ax=list(axes), label="weight", shrink=0.85)
  fig.suptitle("Weights of x_i over [x_T, e_1..e_n] (paper Eq. 12)")
  return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------------
# Figure 6: image grids.


def to_display_images(images, *, value_range=None) -> np.ndarray:
  """Any batch of samples as displayable images.

  Args:
    images: (B, H, W, 3) or (B, H, W) uint8 (used as is); (B, C, H, W) floats with C in
      {1, 3} (pixels in ``value_range``, default [-1, 1]); or (B, D) float vectors (shown as
      the nearest square, scaled by ``value_range``, default the batch's min and max).
    value_range: (low, high) mapped to black and white.

  Returns:
    (B, H, W) or (B, H, W, 3) float images in [0, 1].
  """
  x = np.asarray(images)
  if x.ndim < 2:
    raise ValueError(f"images: expected a batch (B, ...), got shape {x.shape}")
  if x.dtype == np.uint8:
    if x.ndim not in (3, 4):
      raise ValueError(f"images: uint8 images must be (B, H, W) or (B, H, W, 3), got {x.shape}")
    return x.astype(np.float64) / 255.0
  x = x.astype(np.float64)
  if x.ndim == 4 and x.shape[1] in (1, 3):
    lo, hi = value_range or (-1.0, 1.0)
    x = x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)
  elif x.ndim == 2:
    d = x.shape[1]
    side = int(math.ceil(math.sqrt(d)))
    padded = np.full((x.shape[0], side * side), np.nan)
    padded[:, :d] = x
    x = padded.reshape(-1, side, side)
    lo, hi = value_range or (float(np.nanmin(x)), float(np.nanmax(x)))
  elif x.ndim == 3:
    lo, hi = value_range or (-1.0, 1.0)
  else:
    raise ValueError(f"images: expected (B, C, H, W), (B, H, W) or (B, D), got {x.shape}")
  if not hi > lo:
    hi = lo + 1.0
  return np.clip(np.nan_to_num((x - lo) / (hi - lo), nan=0.0), 0.0, 1.0)


def image_grid_figure(rows: Mapping[str, object], *, max_columns: int = 8, value_range=None,
                      path=None, cell_inches: float = 1.0, dpi: int = 100, title: str | None = None):
  """Samples of several schedulers on the same noises: one row per scheduler (paper Figure 6).

  Args:
    rows: ``{name: images (B, ...)}`` (see `to_display_images`), e.g. the teacher first then
      each scheduler; column j of every row starts from the same noise.
    max_columns: at most this many samples per row.
    value_range: passed to `to_display_images` (vectors: the range over all rows by default).
    path: write a PNG here when given.
    cell_inches: the size of one image; the PNG is about
      ``((columns + 1.4) * cell_inches, (rows + 0.5) * cell_inches) * dpi`` pixels.
    dpi: resolution.
    title: the figure's title.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  if not rows:
    raise ValueError("rows: expected at least one row of images")
  arrays = {name: np.asarray(v) for name, v in rows.items()}
  if value_range is None and all(a.ndim == 2 and a.dtype != np.uint8 for a in arrays.values()):
    every = np.concatenate([a.reshape(-1) for a in arrays.values()]).astype(np.float64)
    value_range = (float(every.min()), float(every.max()))
  shown = {name: to_display_images(a, value_range=value_range)[:max_columns]
           for name, a in arrays.items()}
  cols = max(v.shape[0] for v in shown.values())
  figsize = ((cols + 1.4) * cell_inches, (len(shown) + 0.5) * cell_inches)
  _check_figsize(figsize, dpi)
  fig = _new_figure(figsize, dpi)
  axes = fig.subplots(len(shown), cols, squeeze=False)
  for r, (name, imgs) in enumerate(shown.items()):
    for c in range(cols):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if c < imgs.shape[0]:
        ax.imshow(imgs[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      if c == 0:
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
  fig.suptitle(title or "Samples from the same noises, one row per scheduler (paper Fig. 6)",
               fontsize=10)
  return _finish(fig, path, dpi)


# What `save_image_grid` writes, by the file name's extension (none: PNG).
IMAGE_FORMATS = {"": "png", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def image_format(path, name: str = "path") -> str:
  """The image format of a file name (`IMAGE_FORMATS`); ValueError naming ``name`` otherwise."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext not in IMAGE_FORMATS:
    raise ValueError(f"{name}: expected a .png, .jpg or .jpeg file name, got "
                     f"{os.fspath(path)!r}")
  return IMAGE_FORMATS[ext]


def save_image_grid(images, path, *, ncols: int = 8, scale: int | None = None, pad: int = 1,
                    value_range=None) -> np.ndarray:
  """Writes a batch of samples as one PNG (or JPEG) mosaic (pixels only, no axes).

  Args:
    images: see `to_display_images`.
    path: the image to write: PNG (``.png`` or no extension) or JPEG (``.jpg``, ``.jpeg``);
      another extension is a ValueError.
    ncols: images per row.
    scale: nearest-neighbour upscaling (default: enough to make each image >= 64 px).
    pad: black pixels between images (before scaling).
    value_range: passed to `to_display_images`.

  Returns:
    The written (H, W) or (H, W, 3) float image in [0, 1].
  """
  if not isinstance(ncols, (int, np.integer)) or ncols < 1:
    raise ValueError(f"ncols: expected a positive int, got {ncols!r}")
  fmt = image_format(path)
  tiles = to_display_images(images, value_range=value_range)
  n, h, w = tiles.shape[:3]
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  extra = tiles.shape[3:]
  grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad) + extra)
  for k in range(n):
    r, c = divmod(k, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tiles[k]
  scale = scale or max(1, math.ceil(64 / max(h, w)))
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  path = os.fspath(path)
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  plt = _plt()
  if fmt == "jpeg":  # no alpha channel in JPEG: 8-bit gray or RGB
    pixels = np.clip(np.round(grid * 255.0), 0, 255).astype(np.uint8)
    plt.imsave(path, np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels,
               format="jpeg", pil_kwargs={"quality": 95})
  else:
    plt.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
  return grid
