"""README.md: its python blocks run as written, and it says what a new user needs to know."""
import os
import re
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
# A block whose first line is one of these comments is not run (it needs what a user brings).
NOT_RUN = ("# needs real Stable Diffusion weights", "# fragment:")
# The ten-line block runs a 100-step teacher on 8 digits noises: seconds, compile included.
MAX_BLOCK_SECONDS = 60.0


def _text():
  with open(README, encoding="utf-8") as f:
    return f.read()


def _python_blocks():
  return re.findall(r"^```python\n(.*?)^```", _text(), flags=re.S | re.M)


def _section(title):
  text = _text()
  start = text.index(f"\n## {title}")
  end = text.find("\n## ", start + 1)
  return text[start:end if end >= 0 else None]


def test_every_python_block_runs_or_says_why_not():
  blocks = _python_blocks()
  assert len(blocks) >= 3
  for block in blocks:
    first = block.splitlines()[0]
    runnable = not first.startswith(NOT_RUN)
    # The blocks a user cannot run as written name why on their first line.
    assert runnable or "tests do not run it" in first, first
  assert not _python_blocks()[0].splitlines()[0].startswith(NOT_RUN)


@pytest.mark.parametrize("index", [i for i, b in enumerate(_python_blocks())
                                   if not b.splitlines()[0].startswith(NOT_RUN)])
def test_runnable_blocks_run(index, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the API block writes its schedule file here
  start = time.perf_counter()
  exec(compile(_python_blocks()[index], f"README.md block {index}", "exec"), {})  # noqa: S102
  assert time.perf_counter() - start < MAX_BLOCK_SECONDS


def test_the_api_block_loads_the_model_as_the_notebooks_do():
  block = _python_blocks()[0]
  with open(os.path.join(REPO, "notebooks", "make_notebooks.py"), encoding="utf-8") as f:
    notebooks = f.read()
  assert "oj.compare.embedded_model(" in block and "oj.compare.embedded_model(" in notebooks
  assert "load_digits_model" not in block


def test_bring_your_model_names_partial_and_static_argnums():
  section = _section("Any linear teacher")
  paragraph = section[:section.index("```python")]
  assert "jax.tree_util.Partial" in paragraph and "static_argnums=0" in paragraph
  assert "teacher=teacher" in paragraph


def test_schedule_docstring_points_only_to_what_exists():
  import olss_jax as oj
  for name in re.findall(r"`Schedule\.(\w+)`", oj.Schedule.__doc__):
    assert hasattr(oj.Schedule, name), name
