"""The notebooks execute top to bottom (nbclient), and are committed executed, with outputs."""
import os
import time

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")


def execute(name, monkeypatch, timeout=900):
  from nbclient import NotebookClient
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  start = time.perf_counter()
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": NOTEBOOKS}}).execute()
  seconds = time.perf_counter() - start
  print(f"{name}: {seconds:.0f} s")
  return nb, seconds


# Figures each committed notebook shows (image outputs), as written by make_notebooks.py.
MIN_COMMITTED_IMAGES = {"quickstart.ipynb": 1, "analysis.ipynb": 5, "stable_diffusion.ipynb": 1}


@pytest.mark.parametrize("name", ["quickstart.ipynb", "analysis.ipynb", "stable_diffusion.ipynb"])
def test_committed_executed_with_outputs(name):
  """A reader browsing the repository sees every cell's output: each code cell was executed in
  order, none raised, and the figures are there."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  nbformat.validate(nb)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), name
  for cell in code:
    assert "_src" not in cell.source, f"{name}: notebooks use only the public API"
    assert cell.outputs, f"{name}: a code cell without output: {cell.source[:60]!r}"
    assert not any(o.get("output_type") == "error" for o in cell.outputs), name
  images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
  assert len(images) >= MIN_COMMITTED_IMAGES[name], name


def test_committed_notebooks_are_what_make_notebooks_writes():
  """The .ipynb files are generated from notebooks/make_notebooks.py; an edit made to one side
  only would be lost (or never reach the notebook) at the next regeneration."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("make_notebooks",
                                                os.path.join(NOTEBOOKS, "make_notebooks.py"))
  maker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(maker)
  for name, cells in maker.NOTEBOOKS.items():
    committed = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    built = maker.build(cells)
    assert [(c.cell_type, c.source) for c in committed.cells] == \
        [(c.cell_type, c.source) for c in built.cells], name


def test_quickstart_runs_at_reduced_size(monkeypatch):
  monkeypatch.setenv("OLSS_NOTEBOOK_SIZE", "small")
  nb, _ = execute("quickstart.ipynb", monkeypatch)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "timesteps:" in text and "RMSE to the teacher" in text
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, "the sample grid was not drawn"


@pytest.mark.slow
def test_quickstart_runs(monkeypatch):
  monkeypatch.delenv("OLSS_NOTEBOOK_SIZE", raising=False)
  nb, _ = execute("quickstart.ipynb", monkeypatch)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "timesteps:" in text and "RMSE to the teacher" in text


@pytest.mark.slow
def test_analysis_runs_at_reduced_size(monkeypatch):
  """Slow (about 3 minutes): the committed notebook carries these outputs already
  (`test_committed_executed_with_outputs`) and tests/test_figures.py runs each figure function;
  this re-executes the whole notebook against today's code."""
  monkeypatch.setenv("OLSS_NOTEBOOK_SIZE", "small")
  nb, _ = execute("analysis.ipynb", monkeypatch)
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) >= 3, "the figures were not drawn"


@pytest.mark.slow
def test_analysis_runs(monkeypatch):
  monkeypatch.delenv("OLSS_NOTEBOOK_SIZE", raising=False)
  execute("analysis.ipynb", monkeypatch, timeout=1800)


def test_stable_diffusion_runs(monkeypatch):
  monkeypatch.delenv("OLSS_SD_WEIGHTS", raising=False)
  nb, _ = execute("stable_diffusion.ipynb", monkeypatch)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "timesteps:" in text and "guidance" in text.lower()
