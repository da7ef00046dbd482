"""olss_jax.cli: help, exit codes, one-line errors, collect -> fit -> sample, one store layout."""
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import cli

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
  path = str(tmp_path_factory.mktemp("fit") / "olss4.safetensors")
  assert cli.main(["fit", store, "--steps", "4", "-o", path, "-q"]) == 0
  return path


def test_help_everywhere_with_examples(capsys):
  rc, out, _ = run(capsys, "--help")
  assert rc == 0 and "examples:" in out
  for command in cli.COMMANDS:
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0, command
    assert "examples:" in out and f"olss-jax {command}" in out, command
  rc, out, _ = run(capsys, "fit", "--help")
  assert all(m in out for m in oj.METHODS)          # the library's vocabulary, not a copy
  rc, out, _ = run(capsys, "demo", "--help")
  assert all(m in out for m in oj.compare.EMBEDDED_MODELS)


def test_bad_option_exits_2(capsys):
  rc, _, err = run(capsys, "fit", "somewhere", "--steps", "three", "-o", "x.safetensors")
  assert rc == 2 and "invalid int value" in err
  rc, _, err = run(capsys, "fit", "--frobnicate")
  assert rc == 2 and "error:" in err
  rc, _, err = run(capsys, "fit", "t/", "--steps", "3", "-o", "x", "--method", "closed-loop")
  assert rc == 2 and "invalid choice" in err


def test_missing_files_are_one_line_errors(capsys, tmp_path):
  rc, _, err = run(capsys, "fit", tmp_path / "nowhere", "--steps", "3", "-o", tmp_path / "x")
  assert rc == 1
  assert_one_line_error(err, "nowhere", "does not exist")
  rc, _, err = run(capsys, "sample", tmp_path / "none.safetensors", "-o", tmp_path / "x.png")
  assert rc == 1
  assert_one_line_error(err, "none.safetensors")
  rc, _, err = run(capsys, "sample", tmp_path / "none.safetensors", "-o", tmp_path / "x.png",
                   "--model", tmp_path / "no-sd-here")
  assert rc == 1
  assert_one_line_error(err)


def test_collect_fit_sample_round_trip(capsys, store, fitted, tmp_path):
  traj = oj.store.load_store(store)
  assert traj.batch_size == 6 and traj.num_teacher_steps == 30
  schedule = oj.load_schedule(fitted)
  assert schedule.num_steps == 4
  meta = schedule.metadata
  # A store records its model: the library's best method (tuned closed loop) by default.
  assert meta["method"] == "olss-ft" and meta["model_name"].startswith("gaussian-mixture")
  assert meta["sample_shape"] == [16]
  expected = oj.fit_olss(traj, 4, denoise_fn=oj.store.store_denoiser(store), method="olss-ft")
  np.testing.assert_array_equal(schedule.weights, expected.weights)

  rc, out, _ = run(capsys, "fit", store, "--steps", "3", "--method", "olss-p", "-o",
                   tmp_path / "p.safetensors", "-q")
  assert rc == 0
  timesteps = oj.load_schedule(tmp_path / "p.safetensors").timesteps
  assert f"timesteps: {' '.join(str(int(t)) for t in timesteps)}" in out
  step_lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
  assert len(step_lines) == 3          # one line per step with its error
  assert out.startswith("olss-p: 3 steps") and "max error" in out

  png = tmp_path / "samples.png"
  rc, out, _ = run(capsys, "sample", fitted, "-o", png, "--model", "analytic",
                   "--num-images", "4", "-q")
  assert rc == 0 and png.stat().st_size > 100 and "4 samples" in out


def test_a_single_trajectory_file_gets_the_papers_fit(capsys, store, tmp_path):
  single = tmp_path / "one.safetensors"
  oj.save_trajectory(single, oj.store.load_store(store),
                     metadata={"schedule_metadata": {"model_name": "mixture"}})
  rc, out, _ = run(capsys, "fit", single, "--steps", "3", "-o", tmp_path / "s.safetensors", "-q")
  assert rc == 0 and out.startswith("olss: 3 steps")
  assert oj.load_schedule(tmp_path / "s.safetensors").metadata["model_name"] == "mixture"
  rc, _, err = run(capsys, "fit", single, "--steps", "3", "--method", "olss-cl", "-o",
                   tmp_path / "x.safetensors", "-q")
  assert rc == 1
  assert_one_line_error(err, "directory written by 'olss-jax collect'")


def test_collect_resumes_without_redoing_chunks(capsys, tmp_path, monkeypatch):
  directory = tmp_path / "resume"
  real = oj.store.collect_embedded_to_directory  # what 'olss-jax collect' calls, by this name

  def interrupt_after_first_chunk(*args, callback, **kwargs):
    def interrupting(event):
      callback(event)
      if event.status == "done" and event.chunk_index == 0:
        raise KeyboardInterrupt
    return real(*args, callback=interrupting, **kwargs)

  monkeypatch.setattr(oj.store, "collect_embedded_to_directory", interrupt_after_first_chunk)
  rc, _, err = run(capsys, "collect", directory, "--num-images", "4", "--chunk-size", "2", "-q",
                   *TINY)
  assert rc == 130 and "rerun" in err
  first = directory / "chunk-00000.safetensors"
  stamp = first.stat().st_mtime_ns
  assert not (directory / "chunk-00001.safetensors").exists()
  monkeypatch.setattr(oj.store, "collect_embedded_to_directory", real)
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
  wrong_shape = tmp_path / "wrong-shape.safetensors"
  oj.save_schedule(wrong_shape, schedule.with_metadata(sample_shape=[1, 8, 8]))
  rc, _, err = run(capsys, "sample", wrong_shape, "-o", tmp_path / "x.png", "--model",
                   "analytic", "-q")
  assert rc == 1
  assert_one_line_error(err, "sample shape")
  other_model = tmp_path / "other-model.safetensors"
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
                   "--num-eval", "4", "--teacher-steps", "30", "--refit", "olss-p", "-q")
  assert rc == 0
  rows = [line for line in out.splitlines() if line.startswith("| ")]
  assert [r.split("|")[1].strip() for r in rows[1:]] == [
      "olss4.safetensors (olss-ft)", "ddim", "olss-p"]
  assert rows[0] == "| method | 4 steps |"
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
  rc, _, err = run(capsys, "fit", directory, "--steps", "2", "--method", "olss-p", "-o",
                   tmp_path / "s.safetensors", "-q")
  # no bar: at most the one-line warning that 2 fitting noises are few
  assert rc == 0 and all(line.startswith("olss-jax: warning: ") for line in err.splitlines())


def test_no_command_runs_the_demo(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the demo writes its PNGs into the working directory
  rc, out, _ = run(capsys, "-q", "--model", "analytic", "--steps", "5", "--num-fit", "4",
                   "--num-eval", "4", "--teacher-steps", "20", "--methods", "ddim", "olss")
  assert rc == 0 and "| ddim |" in out and "| olss |" in out
  assert (tmp_path / "olss_jax_demo" / "error_vs_steps.png").exists()
  rc, _, err = run(capsys, "demo", "-q", "--methods", "heun")
  assert rc == 1
  assert_one_line_error(err, "heun")


def test_python_dash_m_runs_in_a_fresh_process(tmp_path):
  """The real entry point: one line on stderr, no traceback, no library deprecation noise."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "olss_jax", "fit", str(tmp_path / "missing"),
                         "--steps", "3", "-o", str(tmp_path / "x.safetensors")],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert proc.stderr.startswith("olss-jax: error: ")
  assert "deprecat" not in proc.stderr.lower()


# --- one store layout: the library's and the command line's stores cross both ways ----------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
  directory = oj.stable_diffusion.save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")
  return directory, oj.stable_diffusion.load_stable_diffusion(directory)


def test_a_library_sd_store_is_fitted_closed_loop_by_the_command_line(capsys, tiny_sd, tmp_path):
  directory, sd = tiny_sd
  store = tmp_path / "sd-store"
  oj.stable_diffusion.collect_sd_to_directory(store, sd, ["a cat", "the dog"],
                                              key=jax.random.key(0), num_images=4,
                                              images_per_chunk=2, num_teacher_steps=20,
                                              steps_per_chunk=10)
  rc, out, err = run(capsys, "fit", store, "--steps", "3", "--model", directory, "-o",
                     tmp_path / "sd3.safetensors", "-q")
  assert rc == 0, err
  schedule = oj.load_schedule(tmp_path / "sd3.safetensors")
  assert schedule.metadata["method"] == "olss-ft" and out.startswith("olss-ft: 3 steps")
  assert schedule.metadata["model"] == "tiny-sd" and schedule.metadata["latent_shape"] == [4, 8, 8]
  # without the model the command line names what it needs
  rc, _, err = run(capsys, "fit", store, "--steps", "3", "-o", tmp_path / "x", "-q")
  assert rc == 1
  assert_one_line_error(err, "--model")


def test_a_command_line_sd_store_is_read_by_the_library(capsys, tiny_sd, tmp_path):
  directory, sd = tiny_sd
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a cat\n\nthe dog\n")
  store = tmp_path / "cli-sd-store"
  rc, _, err = run(capsys, "collect", store, "--model", directory, "--prompts", prompts,
                   "--num-images", "4", "--chunk-size", "2", "--teacher-steps", "20",
                   "--steps-per-chunk", "10", "-q")
  assert rc == 0, err
  assert oj.store.read_manifest(store)["config"]["user"]["schedule_metadata"]["guidance_scale"] == 7.0
  teacher = oj.stable_diffusion.load_sd_teacher(store)
  paper = oj.stable_diffusion.fit_sd_schedule(teacher, 3)
  closed = oj.stable_diffusion.fit_sd_schedule(
      teacher, 3, method="olss-cl", denoise_fn=oj.store.store_denoiser(store, sd=sd))
  assert paper.metadata["model"] == closed.metadata["model"] == "tiny-sd"
  assert closed.metadata["fit"] == "closed_loop"
  png = tmp_path / "sd.png"
  oj.save_schedule(tmp_path / "closed.safetensors", closed)
  rc, _, err = run(capsys, "sample", tmp_path / "closed.safetensors", "--model", directory,
                   "--prompt", "a cat", "--num-images", "2", "-o", png, "-q")
  assert rc == 0 and png.stat().st_size > 100 and "deprecat" not in err.lower()
  rc, _, err = run(capsys, "sample", tmp_path / "closed.safetensors", "--model", directory,
                   "-o", png, "-q")
  assert rc == 1
  assert_one_line_error(err, "--prompts")
  with pytest.raises(ValueError, match="tiny-sd"):
    oj.store.store_denoiser(store, sd=oj.stable_diffusion.load_stable_diffusion(
        oj.stable_diffusion.save_tiny_stable_diffusion(tmp_path / "other-sd")))


# --- every command on both digits models (issue 26): flow (velocity) and epsilon --------------

DIGITS_TEACHER = ["--teacher-steps", "20", "--steps-per-chunk", "10"]
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG", b"\xff\xd8\xff"


@pytest.fixture(scope="module", params=["digits-flow", "digits"])
def digits(request, tmp_path_factory):
  """(model, store of 4 noises, its default 3-step fit, what that fit drew on stderr)."""
  model = request.param
  root = tmp_path_factory.mktemp(model)
  directory, schedule = str(root / "teacher"), str(root / "ft3.safetensors")
  assert cli.main(["collect", directory, "--model", model, "--num-images", "4", "-q",
                   *DIGITS_TEACHER]) == 0
  err = io.StringIO()
  with contextlib.redirect_stderr(err):           # the bar on: no -q
    assert cli.main(["fit", directory, "--steps", "3", "-o", schedule]) == 0
  return model, directory, schedule, err.getvalue()


def test_sample_and_compare_run_on_the_flow_and_the_epsilon_model(capsys, digits, tmp_path):
  model, _, schedule, _ = digits
  png = tmp_path / "x.png"
  rc, out, err = run(capsys, "sample", schedule, "--model", model, "-o", png, "--num-images",
                     "4", "-q")
  assert rc == 0, err
  assert png.read_bytes()[:4] == PNG_MAGIC and "4 samples, 3 steps (olss-ft)" in out
  rc, out, err = run(capsys, "compare", schedule, "--model", model, "--num-eval", "4",
                     "--num-fit", "4", "-q", *DIGITS_TEACHER[:2])
  assert rc == 0, err
  rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
  first = "euler" if model == "digits-flow" else "ddim"     # the default baselines of its kind
  assert rows[1:] == ["ft3.safetensors (olss-ft)", first, "dpm_solver_pp", "unipc"]
  if model == "digits-flow":
    rc, _, err = run(capsys, "compare", schedule, "--model", model, "--baselines", "ddim,pndm")
    assert rc == 1
    assert_one_line_error(err, "--baselines", "'ddim'", "not available", "'flow'")


def test_a_schedule_of_the_other_kind_is_one_line(capsys, digits, tmp_path):
  model, _, schedule, _ = digits
  other = "digits" if model == "digits-flow" else "digits-flow"
  kinds = ("'flow'", "'ddim'") if model == "digits-flow" else ("'ddim'", "'flow'")
  rc, _, err = run(capsys, "sample", schedule, "--model", other, "-o", tmp_path / "x.png", "-q")
  assert rc == 1
  assert_one_line_error(err, f"made for a {kinds[0]} teacher", f"used with a {kinds[1]} teacher")
  rc, _, err = run(capsys, "compare", schedule, "--model", other, "-q")
  assert rc == 1
  assert_one_line_error(err, f"made for a {kinds[0]} teacher")


def test_sample_writes_jpeg_for_jpg_and_refuses_other_names(capsys, digits, tmp_path):
  model, _, schedule, _ = digits
  jpg = tmp_path / "x.jpg"
  rc, _, err = run(capsys, "sample", schedule, "--model", model, "-o", jpg, "--num-images", "2",
                   "-q")
  assert rc == 0, err
  assert jpg.read_bytes()[:3] == JPEG_MAGIC
  rc, _, err = run(capsys, "sample", schedule, "--model", model, "-o", tmp_path / "x.gif")
  assert rc == 1
  assert_one_line_error(err, "-o: expected a .png, .jpg or .jpeg", "x.gif")


def test_the_default_fit_shows_a_bar_that_moves(digits):
  _, _, _, err = digits
  # tqdm redraws "fit olss-ft, 3 steps: <count>stage [...]" as the fit advances
  counts = [int(c) for c in re.findall(r"fit olss-ft, 3 steps: (\d+)stage", err)]
  assert counts and max(counts) >= 4, err[-2000:]      # the search, candidates, the fit
  assert "tune path" in err


def test_collect_grows_a_finished_store_and_names_the_option_that_differs(capsys, digits,
                                                                          tmp_path):
  model, directory, _, _ = digits
  manifest = oj.store.read_manifest(directory)
  assert manifest["config"]["user"]["images_per_chunk"] == 4    # the default chunk size
  grown = tmp_path / "grown"
  shutil.copytree(directory, grown)
  args = ["--model", model, "-q", *DIGITS_TEACHER]
  rc, out, err = run(capsys, "collect", grown, "--num-images", "6", *args)
  assert rc == 0, err
  assert "collected 1, already done 1" in out                    # 4 kept, 2 collected
  before, after = oj.store.load_store(directory), oj.store.load_store(grown)
  assert after.batch_size == 6
  np.testing.assert_array_equal(after.x_T[:4], before.x_T)
  rc, _, err = run(capsys, "collect", grown, "--num-images", "6", "--seed", "2", *args)
  assert rc == 1 and len(err) < 300, err
  assert_one_line_error(err, "--seed:", "another configuration", "use the same --seed")
  rc, _, err = run(capsys, "collect", grown, "--num-images", "2", *args)
  assert rc == 1
  assert_one_line_error(err, "--num-images:", "never shrinks")


def test_collect_defaults_to_small_chunks_and_resumes_a_store_with_its_own(capsys, tmp_path):
  fresh = tmp_path / "fresh"
  rc, _, err = run(capsys, "collect", fresh, "--num-images", "8", "-q", *TINY)
  assert rc == 0, err
  assert oj.store.read_manifest(fresh)["config"]["num_chunks"] == 2     # chunks of 4
  old = tmp_path / "old"                   # collected with another chunk size than the default
  rc, _, err = run(capsys, "collect", old, "--num-images", "6", "--chunk-size", "6", "-q", *TINY)
  assert rc == 0, err
  rc, out, err = run(capsys, "collect", old, "--num-images", "6", "-q", *TINY)
  assert rc == 0 and "already done 1" in out, err
