"""Writes the notebooks of this folder from the cells below, executed, with their outputs.

Edit the cells here, then run ``python notebooks/make_notebooks.py``: each .ipynb is generated
(nbformat v4) and executed top to bottom with nbclient at the reduced size
(``OLSS_NOTEBOOK_SIZE=small``: a few minutes in all on a 2-core CPU), so the committed notebooks
show their tables and figures on a repository page. ``--no-execute`` writes them without
outputs. The test suite checks that the committed cells are the ones written here and carry
outputs, and executes the notebooks again at the reduced size (tests/test_notebooks.py).
"""
from __future__ import annotations

import argparse
import os
import time

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

QUICKSTART = [
    ("md", """# OLSS quickstart: fit a fast sampler and use it

OLSS (Duan et al., CIKM 2023) runs the model's complete 1000-step DDIM process once on a few
noises (the *teacher*), chooses n of its steps (path search, Algorithms 1-3) and fits the
linear weights of an n-step sampler by least squares (Eq. 12). This notebook does it on the
embedded model (the digits UNet shipped with the package, or the analytic Gaussian mixture when
its weights are not installed) in well under two minutes on a CPU."""),
    ("code", """import os
import tempfile
import time

import jax
import numpy as np

import olss_jax as oj

start = time.perf_counter()
model = oj.compare.embedded_model()  # "digits" if its weights are installed, else "analytic"
# OLSS_NOTEBOOK_SIZE=small runs every cell at a reduced size in seconds (the test suite does).
SMALL = os.environ.get("OLSS_NOTEBOOK_SIZE") == "small"
print(model.name, "sample shape", model.sample_shape, "(small)" if SMALL else "")"""),
    ("md", """## 1. The teacher: the complete generation process on 16 noises
`collect_trajectory` records the model output of every one of the 1000 DDIM steps. It runs in
jitted chunks of 100 steps here, so a progress callback could report between chunks. The paper
fits on 32 noises; 16 keep this notebook under two minutes on a CPU."""),
    ("code", """NUM_FIT, TEACHER_STEPS = (8, 200) if SMALL else (16, 1000)
x_fit = jax.random.normal(jax.random.key(1), (NUM_FIT,) + tuple(model.sample_shape))
denoise_fit = model.denoiser(model.draw_conditions(1, NUM_FIT))
traj = oj.collect_trajectory(denoise_fit, x_fit, model.alphas_cumprod, TEACHER_STEPS,
                             steps_per_chunk=100)
print("model outputs", traj.model_outputs.shape)"""),
    ("md", """## 2. Search the path and fit the weights
The paper's two verbs: `search_path` picks which teacher steps the 10-step sampler calls the
model at (Algorithms 1-3: minimising the largest per-step least-squares error) and
`fit_weights` solves Eq. 12 for each step. Both are JAX functions (`jax.jit`, `vmap` and
`grad` compose with them) and return their diagnostics beside the result. `fit_olss` is the
one recipe: with the model it runs the library's default, `olss-ft`: the closed-loop fit (Eq. 12
on the sampler's own states) on a path tuned for the final error, validated on a held-out
quarter of the fitting noises."""),
    ("code", """STEPS = 10
path, info = oj.search_path(traj, STEPS)
schedule, fit_info = oj.fit_weights(traj, path)
print("timesteps:", np.asarray(schedule.timesteps))
print("largest step error %.3e (uniform path: %.3e)" % (info.max_error, info.uniform_max_error))
# method "olss-ft"; max_evaluations: candidate paths its search fits (400 by default)
closed = oj.fit_olss(traj, STEPS, denoise_fn=denoise_fit, max_evaluations=60 if SMALL else 400)
print("closed loop:", closed.metadata["method"], np.asarray(closed.timesteps))"""),
    ("md", """## 3. Sample new images and compare with DDIM
Every scheduler is a weight matrix run by the same `sample`. The reference is the teacher
run on the same held-out noises."""),
    ("code", """NUM_EVAL = 8
x_eval = jax.random.normal(jax.random.key(2), (NUM_EVAL,) + tuple(model.sample_shape))
conditions = model.draw_conditions(2, NUM_EVAL)
denoise_eval = model.denoiser(conditions)
reference = oj.collect_trajectory(denoise_eval, x_eval, model.alphas_cumprod, TEACHER_STEPS,
                                  steps_per_chunk=100).states[-1]
ddim = oj.baseline_schedule("ddim", model.alphas_cumprod, STEPS)
sample = jax.jit(oj.sample)
samples = {"teacher (1000)": np.asarray(reference)}
for name, sched in {"ddim": ddim, "olss": schedule, "olss-ft": closed}.items():
  out = np.asarray(sample(denoise_eval, sched, x_eval))
  rmse = np.sqrt(np.mean((out - np.asarray(reference)) ** 2))
  print(f"{name:7s} {STEPS} steps: RMSE to the teacher {rmse:.4f}")
  samples[f"{name} ({STEPS})"] = out"""),
    ("code", """oj.figures.image_grid_figure(samples, max_columns=8)"""),
    ("md", """## 4. Save the schedule and load it back
Schedule files are safetensors files, checksummed and versioned; the metadata records what
the schedule was fitted for."""),
    ("code", """folder = tempfile.mkdtemp()
file = os.path.join(folder, "olss10.safetensors")
oj.save_schedule(file, closed.with_metadata(model_name=model.name))
loaded = oj.load_schedule(file)
assert np.array_equal(loaded.weights, closed.weights)
print(loaded, {k: loaded.metadata[k] for k in ("method", "teacher_steps", "num_fit_images")})
print(f"total {time.perf_counter() - start:.0f} s")"""),
    ("md", """The same from the shell:

```
olss-jax collect teacher/ --num-images 32
olss-jax fit teacher/ --steps 10 -o olss10.safetensors
olss-jax sample olss10.safetensors -o samples.png
olss-jax compare olss10.safetensors
```"""),
]

ANALYSIS = [
    ("md", """# The paper's figures on the embedded model

Figure 2 (correlation of the teacher's states and outputs), Figure 4 (error against steps),
Figure 5 (generation paths by PCA), Figure 6 (samples per scheduler) and the fitted weight
matrix beside DDIM's. `olss_jax.figures.paper_figures` runs one held-out comparison and writes them
all; the cells below also show the individual figure functions."""),
    ("code", """import os
import tempfile

import jax
import numpy as np
from IPython.display import Image, display

import olss_jax as oj

model = oj.compare.embedded_model()
out_dir = tempfile.mkdtemp()
# OLSS_NOTEBOOK_SIZE=small runs every cell at a reduced size in seconds (the test suite does).
SMALL = os.environ.get("OLSS_NOTEBOOK_SIZE") == "small"
TEACHER = 200 if SMALL else 1000
print(model.name, "(small)" if SMALL else "")"""),
    ("code", """written = oj.figures.paper_figures(model, out_dir, steps=(5,) if SMALL else (5, 10, 20),
                                   num_fit=8 if SMALL else 32, num_eval=16 if SMALL else 64,
                                   num_teacher_steps=TEACHER,
                                   baselines=("ddim", "dpm_solver_pp") if SMALL else
                                   oj.figures.FIGURE_BASELINES,
                                   # small: no learned-timestep peers, a short olss-ft search
                                   peers=not SMALL, max_evaluations=30 if SMALL else 400)
for path in written:
  print(path)
  display(Image(filename=path))"""),
    ("md", """## The figure functions one by one
Each takes plain arrays (or a `Trajectory`, `Schedule`s, a comparison) and returns a matplotlib
figure; `path=` also writes a PNG."""),
    ("code", """x_T = jax.random.normal(jax.random.key(3), (8,) + tuple(model.sample_shape))
denoise = model.denoiser(model.draw_conditions(3, 8))
traj = oj.collect_trajectory(denoise, x_T, model.alphas_cumprod, TEACHER, steps_per_chunk=100)
oj.figures.correlation_figure(traj, num_points=60)"""),
    ("code", """olss, _ = oj.fit_weights(traj, oj.search_path(traj, 6)[0])
ddim = oj.baseline_schedule("ddim", model.alphas_cumprod, 6)
oj.figures.weights_figure({"OLSS (6 steps)": olss, "DDIM (6 steps)": ddim})"""),
    ("code", """# The paths on three held-out noises (seed 4; the fit used seed 3) and their own teacher.
x_new = jax.random.normal(jax.random.key(4), (3,) + tuple(model.sample_shape))
denoise_new = model.denoiser(model.draw_conditions(4, 3))
teacher_new = oj.collect_trajectory(denoise_new, x_new, model.alphas_cumprod, TEACHER)
histories = {}
for name, sched in {"olss": olss, "ddim": ddim}.items():
  histories[name] = oj.sample_states(denoise_new, sched, x_new)
oj.figures.generation_paths_figure(histories, teacher_new.states, samples=(0, 1, 2))"""),
]

STABLE_DIFFUSION = [
    ("md", """# OLSS on Stable Diffusion

Set `OLSS_SD_WEIGHTS` to a local Flax Stable Diffusion directory (diffusers layout: `unet/`,
`vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` with `*.msgpack` weights) to run the
paper's setting: a 1000-step teacher on 32 images at guidance 7.0. Without it, the notebook
builds a tiny random pipeline in a temporary folder so that every step still runs (the images
are then noise: the weights are random)."""),
    ("code", """import os
import tempfile

import jax
import numpy as np

import olss_jax as oj

weights = os.environ.get("OLSS_SD_WEIGHTS")
if weights:
  sd = oj.stable_diffusion.load_stable_diffusion(weights)
  TEACHER_STEPS, NUM_FIT, STEPS = 1000, 32, 10
else:
  weights = oj.stable_diffusion.save_tiny_stable_diffusion(os.path.join(tempfile.mkdtemp(), "tiny-sd"))
  sd = oj.stable_diffusion.load_stable_diffusion(weights)
  TEACHER_STEPS, NUM_FIT, STEPS = 50, 4, 5
print(sd)
prompts = ["a cat", "the dog", "a castle on a hill at sunset", "a wolf in the snow"]"""),
    ("md", """## The teacher and the fit
`collect_sd_trajectory` runs the guided 1000-step DDIM teacher (paper Sec. 3.3) on the prompts;
`fit_sd_schedule` searches the path and fits the weights, recording the model, resolution and
guidance scale in the schedule's metadata."""),
    ("code", """teacher = oj.stable_diffusion.collect_sd_trajectory(sd, prompts, key=jax.random.key(0), num_images=NUM_FIT,
                                   num_teacher_steps=TEACHER_STEPS, guidance_scale=7.0,
                                   images_per_chunk=8, steps_per_chunk=50)
schedule = oj.stable_diffusion.fit_sd_schedule(teacher, STEPS)
print("timesteps:", np.asarray(schedule.timesteps))
print({k: schedule.metadata[k] for k in ("model", "resolution", "guidance_scale")})
file = os.path.join(tempfile.mkdtemp(), f"sd-olss{STEPS}.safetensors")
oj.save_schedule(file, schedule)"""),
    ("md", """## Generate with OLSS and with DDIM from the same noises"""),
    ("code", """noise = sd.info.noise
ddim = oj.baseline_schedule("ddim", sd.alphas_cumprod, STEPS, steps_offset=noise.steps_offset,
                            final_alpha_cumprod=noise.final_alpha_cumprod)
key = jax.random.key(42)
rows = {name: np.asarray(oj.stable_diffusion.generate(sd, sched, prompts, key=key, guidance_scale=7.0))
        for name, sched in {f"DDIM ({STEPS})": ddim,
                            f"OLSS ({STEPS})": oj.load_schedule(file)}.items()}
oj.figures.image_grid_figure(rows, title="same prompts and noises: " + ", ".join(prompts))"""),
    ("md", """A schedule is specific to the model, resolution and guidance scale it was fitted for:
`generate` warns (`ScheduleMismatchWarning`) when it is used for something else."""),
    ("code", """import warnings

with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  oj.stable_diffusion.generate(sd, oj.load_schedule(file), prompts[:1], key=key, guidance_scale=3.0)
print([str(w.message)[:100] for w in caught])"""),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "analysis.ipynb": ANALYSIS,
             "stable_diffusion.ipynb": STABLE_DIFFUSION}


def build(cells) -> nbformat.NotebookNode:
  nb = v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                               "language": "python"}
  nb.metadata["language_info"] = {"name": "python"}
  for i, (kind, text) in enumerate(cells):
    cell = v4.new_markdown_cell(text) if kind == "md" else v4.new_code_cell(text)
    cell["id"] = f"cell-{i}"
    nb.cells.append(cell)
  return nb


def execute(nb: nbformat.NotebookNode, *, timeout: int = 1800) -> float:
  """Runs ``nb`` in place at the reduced size (its outputs filled in); returns the seconds."""
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  os.environ["OLSS_NOTEBOOK_SIZE"] = "small"
  os.environ.pop("OLSS_SD_WEIGHTS", None)  # the committed notebook shows the tiny pipeline
  start = time.perf_counter()
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": HERE}}).execute()
  return time.perf_counter() - start


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--no-execute", action="store_true", help="write without outputs")
  parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebooks to write")
  args = parser.parse_args(argv)
  for name in args.names:
    nb = build(NOTEBOOKS[name])
    if not args.no_execute:
      print(f"executed {name} in {execute(nb):.0f} s")
    nbformat.validate(nb)
    nbformat.write(nb, os.path.join(HERE, name))
    print("wrote", os.path.join(HERE, name))


if __name__ == "__main__":
  main()
