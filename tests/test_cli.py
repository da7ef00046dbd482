"""The olss-jax command line: help, exit codes, one-line errors, collect -> fit -> sample."""
import os
import subprocess
import sys

import pytest

import olss_jax as oj
from olss_jax import cli
from olss_jax._src import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "analytic", "--teacher-steps", "30", "--steps-per-chunk", "10"]


def run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def assert_one_line_error(err, *needles):
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith("olss-jax: error: "), err
  assert "Traceback" not in err
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("cli") / "teacher")
  assert cli.main(["collect", directory, "--num-images", "6", "--chunk-size", "3", "-q",
                   *TINY]) == 0
  return directory


@pytest.fixture(scope="module")
def fitted(store, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("fit") / "olss4.olss")
  assert cli.main(["fit", store, "--steps", "4", "-o", path, "-q"]) == 0
  return path


def test_help_everywhere_with_examples(capsys):
  rc, out, _ = run(capsys, "--help")
  assert rc == 0 and "examples:" in out
  for command in cli.COMMANDS:
    if command == "demo" and cli._demo_module() is not None:  # the lead's parser: its own text
      rc, out, _ = run(capsys, command, "--help")
      assert rc == 0 and "usage: olss-jax demo" in out
      continue
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0, command
    assert "examples:" in out and f"olss-jax {command}" in out, command


def test_bad_option_exits_2(capsys):
  rc, _, err = run(capsys, "fit", "somewhere", "--steps", "three", "-o", "x.olss")
  assert rc == 2 and "invalid int value" in err
  rc, _, err = run(capsys, "fit", "--frobnicate")
  assert rc == 2 and "error:" in err


def test_missing_files_are_one_line_errors(capsys, tmp_path):
  rc, _, err = run(capsys, "fit", tmp_path / "nowhere", "--steps", "3", "-o", tmp_path / "x.olss")
  assert rc == 1
  assert_one_line_error(err, "nowhere", "does not exist")
  rc, _, err = run(capsys, "sample", tmp_path / "none.olss", "-o", tmp_path / "x.png")
  assert rc == 1
  assert_one_line_error(err, "none.olss")
  rc, _, err = run(capsys, "sample", tmp_path / "none.olss", "-o", tmp_path / "x.png",
                   "--model", tmp_path / "no-sd-here")
  assert rc == 1
  assert_one_line_error(err)


def test_collect_fit_sample_round_trip(capsys, store, fitted, tmp_path):
  traj = oj.load_store(store)
  assert traj.batch_size == 6 and traj.num_teacher_steps == 30
  schedule = oj.load_schedule(fitted)
  assert schedule.num_steps == 4
  meta = schedule.metadata
  # A directory from 'collect' gets the measured-best closed-loop fit by default.
  assert meta["method"] == "closed-loop" and meta["model_name"].startswith("gaussian-mixture")
  assert meta["sample_shape"] == [16]

  rc, out, _ = run(capsys, "fit", store, "--steps", "3", "--method", "olss", "--uniform", "-o",
                   tmp_path / "p.olss", "-q")
  assert rc == 0
  timesteps = oj.load_schedule(tmp_path / "p.olss").timesteps
  assert f"timesteps: {' '.join(str(int(t)) for t in timesteps)}" in out
  step_lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
  assert len(step_lines) == 3          # one line per step with its error
  assert "olss-p" in out and "max error" in out

  png = tmp_path / "samples.png"
  rc, out, _ = run(capsys, "sample", fitted, "-o", png, "--model", "analytic",
                   "--num-images", "4", "-q")
  assert rc == 0 and png.stat().st_size > 100 and "4 samples" in out


def test_fit_closed_loop_is_one_flag_away(capsys, store, tmp_path):
  rc, out, _ = run(capsys, "fit", store, "--steps", "3", "--method", "closed-loop", "-o",
                   tmp_path / "cl.olss", "-q")
  assert rc == 0 and out.startswith("closed-loop: 3 steps")
  schedule = oj.load_schedule(tmp_path / "cl.olss")
  assert schedule.metadata["method"] == "closed-loop" and schedule.num_steps == 3
  assert schedule.metadata["model_name"].startswith("gaussian-mixture")
  single = tmp_path / "one.olss"
  oj.save_trajectory(single, oj.load_store(store))
  rc, _, err = run(capsys, "fit", single, "--steps", "3", "--method", "closed-loop", "-o",
                   tmp_path / "x.olss", "-q")
  assert rc == 1
  assert_one_line_error(err, "directory written by 'olss-jax collect'")


def test_collect_resumes_without_redoing_chunks(capsys, tmp_path, monkeypatch):
  directory = tmp_path / "resume"
  real = progress.store_callback

  def interrupt_after_first_chunk(bar):
    inner = real(bar)
    def callback(event):
      inner(event)
      if event.status == "done" and event.chunk_index == 0:
        raise KeyboardInterrupt
    return callback

  monkeypatch.setattr(progress, "store_callback", interrupt_after_first_chunk)
  rc, _, err = run(capsys, "collect", directory, "--num-images", "4", "--chunk-size", "2", "-q",
                   *TINY)
  assert rc == 130 and "rerun" in err
  first = directory / "chunk-00000.olss"
  stamp = first.stat().st_mtime_ns
  assert not (directory / "chunk-00001.olss").exists()
  monkeypatch.setattr(progress, "store_callback", real)
  rc, out, _ = run(capsys, "collect", directory, "--num-images", "4", "--chunk-size", "2", "-q",
                   *TINY)
  assert rc == 0 and "collected 1, already done 1" in out
  assert first.stat().st_mtime_ns == stamp      # the finished chunk was not rewritten
  rc, _, err = run(capsys, "collect", directory, "--num-images", "4", "--chunk-size", "2", "-q",
                   "--model", "analytic", "--teacher-steps", "31")
  assert rc == 1
  assert_one_line_error(err, "another configuration")


def test_mismatched_schedule(capsys, fitted, tmp_path):
  schedule = oj.load_schedule(fitted)
  wrong_shape = tmp_path / "wrong-shape.olss"
  oj.save_schedule(wrong_shape, schedule.with_metadata(sample_shape=[1, 8, 8]))
  rc, _, err = run(capsys, "sample", wrong_shape, "-o", tmp_path / "x.png", "--model",
                   "analytic", "-q")
  assert rc == 1
  assert_one_line_error(err, "sample shape")
  other_model = tmp_path / "other-model.olss"
  oj.save_schedule(other_model, schedule.with_metadata(model_name="someone-else"))
  rc, _, err = run(capsys, "sample", other_model, "-o", tmp_path / "y.png", "--model",
                   "analytic", "--num-images", "2", "-q")
  assert rc == 0
  warning = [line for line in err.splitlines() if line.strip()]
  assert len(warning) == 1 and warning[0].startswith("olss-jax: warning: ")
  assert "someone-else" in warning[0]
  rc, _, err = run(capsys, "sample", fitted, "-o", tmp_path / "z.png", "--model", "analytic",
                   "--labels", "1,2")
  assert rc == 1
  assert_one_line_error(err, "unconditional")


def test_compare_prints_a_table(capsys, fitted):
  rc, out, _ = run(capsys, "compare", fitted, "--model", "analytic", "--baselines", "ddim",
                   "--num-eval", "4", "--teacher-steps", "30", "-q")
  assert rc == 0
  assert "| olss4.olss (closed-loop) |" in out and "| ddim |" in out and "| method | 4 steps |" in out
  rc, _, err = run(capsys, "compare", fitted, "--model", "analytic", "--baselines", "nope")
  assert rc == 1
  assert_one_line_error(err, "nope")


def test_figures_rejects_unknown_names(capsys, tmp_path):
  rc, _, err = run(capsys, "figures", tmp_path, "--only", "heatmap", "--model", "analytic")
  assert rc == 1
  assert_one_line_error(err, "heatmap")


def test_progress_bars_go_to_stderr_and_quiet_silences_them(capsys, tmp_path):
  directory = tmp_path / "bars"
  rc, out, err = run(capsys, "collect", directory, "--num-images", "2", "--chunk-size", "2",
                     *TINY)
  assert rc == 0 and "teacher" in err and "30/30" in err and "%" not in out
  rc, _, err = run(capsys, "fit", directory, "--steps", "2", "-o", tmp_path / "s.olss", "-q")
  assert rc == 0 and err == ""


def test_python_dash_m_runs_in_a_fresh_process(tmp_path):
  """The real entry point: one line on stderr, no traceback, no library deprecation noise."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "olss_jax", "fit", str(tmp_path / "missing"),
                         "--steps", "3", "-o", str(tmp_path / "x.olss")],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert proc.stderr.startswith("olss-jax: error: ")
  assert "deprecat" not in proc.stderr.lower()


@pytest.mark.slow
def test_stable_diffusion_collect_fit_sample(capsys, tmp_path):
  """--model DIR --prompts FILE on a tiny random pipeline; no deprecation notice reaches stderr."""
  model = oj.save_tiny_stable_diffusion(tmp_path / "tiny-sd")
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a cat\n\nthe dog\n")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  store = tmp_path / "sd-teacher"
  proc = subprocess.run([sys.executable, "-m", "olss_jax", "collect", str(store), "--model", model,
                         "--prompts", str(prompts), "--num-images", "4", "--chunk-size", "2",
                         "--teacher-steps", "20", "--steps-per-chunk", "10", "-q"],
                        capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == "", proc.stderr          # no deprecation or safety-checker notices
  manifest = oj.read_manifest(store)
  assert manifest["config"]["user"]["schedule_metadata"]["guidance_scale"] == 7.0
  rc, _, _ = run(capsys, "fit", store, "--steps", "3", "-o", tmp_path / "sd3.olss", "-q")
  assert rc == 0
  schedule = oj.load_schedule(tmp_path / "sd3.olss")
  assert schedule.metadata["model"] == "tiny-sd" and schedule.metadata["latent_shape"] == [4, 8, 8]
  png = tmp_path / "sd.png"
  rc, _, err = run(capsys, "sample", tmp_path / "sd3.olss", "--model", model, "--prompt", "a cat",
                   "--num-images", "2", "-o", png, "-q")
  assert rc == 0 and png.stat().st_size > 100 and "deprecat" not in err.lower()
  rc, _, err = run(capsys, "sample", tmp_path / "sd3.olss", "--model", model, "-o", png, "-q")
  assert rc == 1
  assert_one_line_error(err, "--prompts")


def test_no_command_runs_the_demo(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the demo may write its PNGs into the working directory
  rc, out, _ = run(capsys, "-q", "--model", "analytic", "--steps", "5", "--num-fit", "4",
                   "--num-eval", "4", "--teacher-steps", "20", "--methods", "ddim", "olss")
  if rc == 2:
    pytest.skip("the demo's options changed; the dispatch itself is covered by --help")
  assert rc == 0 and "| ddim |" in out and "| olss |" in out
