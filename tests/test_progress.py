"""Progress bars (progress.py) through the public command line, ``olss_jax.cli.main``.

'olss-jax collect' draws one tqdm bar on stderr counting teacher steps over every chunk
(total ``num_chunks * teacher_steps``; finished chunks of a rerun jump it forward, and its
postfix names the last chunk saved or found done); 'olss-jax fit' draws a bar of stages with no
total. ``-q`` / ``--quiet`` (before or after the command) draws no bar and changes nothing
else. Nothing of a bar goes to stdout.
"""
import contextlib
import io
import json
import os
import re
import shutil

import pytest

from olss_jax import cli

# The smallest collection that still has several chunks and several bar updates per chunk.
NUM_IMAGES = 4
CHUNK_SIZE = 2
TEACHER_STEPS = 4
STEPS_PER_CHUNK = 2
NUM_CHUNKS = -(-NUM_IMAGES // CHUNK_SIZE)
SMALL = ["--model", "analytic", "--chunk-size", str(CHUNK_SIZE), "--teacher-steps",
         str(TEACHER_STEPS), "--steps-per-chunk", str(STEPS_PER_CHUNK)]
# one tqdm frame of the teacher's bar: "<desc>: <pct>%|...| n/total [elapsed..., postfix]"
FRAME = re.compile(r"teacher \((\d+) steps x (\d+) noises\):\s+(\d+)%\|[^|]*\| (\d+)/(\d+) "
                   r"\[([^\]]*)\]")


def run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def teacher_frames(err):
  """Every frame tqdm drew of the teacher's bar, in order: (steps, noises, pct, n, total, tail)."""
  return [tuple(int(g) for g in m.groups()[:5]) + (m.group(6),) for m in FRAME.finditer(err)]


def chunk_digests(directory):
  with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
    return {k: v["sha256"] for k, v in json.load(f)["chunks"].items()}


@pytest.fixture(scope="module")
def first_collect(tmp_path_factory):
  """One collection with bars on: (exit code, stdout, stderr, the store)."""
  directory = str(tmp_path_factory.mktemp("progress") / "teacher")
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = cli.main(["collect", directory, "--num-images", str(NUM_IMAGES), *SMALL])
  return rc, out.getvalue(), err.getvalue(), directory


def test_collect_draws_a_teacher_bar_on_stderr_that_reaches_chunks_times_steps(first_collect):
  rc, out, err, _ = first_collect
  assert rc == 0, err
  frames = teacher_frames(err)
  assert frames, err
  total = NUM_CHUNKS * TEACHER_STEPS
  for steps, noises, _, _, bar_total, _ in frames:
    assert (steps, noises, bar_total) == (TEACHER_STEPS, NUM_IMAGES, total), frames
  counts = [frame[3] for frame in frames]
  assert counts == sorted(counts), counts           # never moves back across chunks
  assert counts[0] == 0 and counts[-1] == total, counts
  assert frames[-1][2] == 100, frames[-1]
  assert f"chunk {NUM_CHUNKS}/{NUM_CHUNKS} saved" in frames[-1][5], frames[-1]
  # stdout holds the summary only, no bar
  assert "\r" not in out and "teacher (" not in out and "%|" not in out, out
  assert f"{NUM_CHUNKS} chunks" in out and f"collected {NUM_CHUNKS}, already done 0" in out, out


def test_rerunning_a_finished_collect_jumps_the_bar_to_its_total(first_collect, capsys,
                                                                tmp_path):
  directory = tmp_path / "again"
  shutil.copytree(first_collect[3], directory)
  rc, out, err = run(capsys, "collect", directory, "--num-images", NUM_IMAGES, *SMALL)
  assert rc == 0, err
  assert f"collected 0, already done {NUM_CHUNKS}" in out, out
  frames = teacher_frames(err)
  assert frames, err
  total = NUM_CHUNKS * TEACHER_STEPS
  assert frames[-1][3:5] == (total, total), frames[-1]
  assert f"chunk {NUM_CHUNKS - 1} already done" in frames[-1][5], frames[-1]


def test_growing_a_store_counts_its_kept_chunks_and_its_new_one(first_collect, capsys, tmp_path):
  directory = tmp_path / "grown"
  shutil.copytree(first_collect[3], directory)
  grown_images = NUM_IMAGES + CHUNK_SIZE
  rc, out, err = run(capsys, "collect", directory, "--num-images", grown_images, *SMALL)
  assert rc == 0, err
  assert f"collected 1, already done {NUM_CHUNKS}" in out, out
  frames = teacher_frames(err)
  total = (NUM_CHUNKS + 1) * TEACHER_STEPS
  assert frames and all(f[4] == total and f[1] == grown_images for f in frames), frames
  counts = [frame[3] for frame in frames]
  assert counts == sorted(counts) and counts[-1] == total, counts
  assert f"chunk {NUM_CHUNKS + 1}/{NUM_CHUNKS + 1} saved" in frames[-1][5], frames[-1]


@pytest.mark.parametrize("where", ["before_command", "after_command"])
@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_collect_draws_no_bar_and_writes_the_same_store(first_collect, capsys, tmp_path,
                                                              flag, where):
  directory = tmp_path / "quiet"
  argv = ["collect", directory, "--num-images", NUM_IMAGES, *SMALL]
  argv = [flag] + argv if where == "before_command" else argv[:2] + [flag] + argv[2:]
  rc, out, err = run(capsys, *argv)
  assert rc == 0, err
  assert err == "", err
  assert f"collected {NUM_CHUNKS}, already done 0" in out, out
  # the bar only watches: the chunks are the same bytes as the run with the bar
  assert chunk_digests(directory) == chunk_digests(first_collect[3])


def test_fit_draws_a_stage_bar_without_total_and_quiet_drops_it(first_collect, capsys,
                                                                tmp_path):
  desc = "fit olss-p, 2 steps: "
  rc, out, err = run(capsys, "fit", first_collect[3], "--steps", "2", "--method", "olss-p",
                     "-o", tmp_path / "loud.safetensors")
  assert rc == 0, err
  counts = [int(c) for c in re.findall(re.escape(desc) + r"(\d+)stage", err)]
  assert counts and counts[-1] >= 1 and counts == sorted(counts), err
  assert not re.search(re.escape(desc) + r"\d+/\d+", err), err     # no total: no "n/total"
  assert desc not in out and "\r" not in out, out
  rc, out, err = run(capsys, "fit", first_collect[3], "--steps", "2", "--method", "olss-p",
                     "-o", tmp_path / "quiet.safetensors", "--quiet")
  assert rc == 0, err
  # no bar: at most the one-line warnings of the command line (e.g. few fitting noises)
  assert all(line.startswith("olss-jax: warning: ") for line in err.splitlines()), err
  assert "timesteps:" in out, out
