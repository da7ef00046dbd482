"""The package's shape: imports point one way, a small front door, no global side effects on import."""
import ast
import os
import subprocess
import sys

import olss_jax as oj

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "olss_jax")


def _module_graph():
  """{module: {olss_jax modules it imports, at any level}} over the package (not benchmarks)."""
  mods = {}
  for root, _, files in os.walk(PACKAGE):
    if "benchmarks" in root.split(os.sep):
      continue
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
      module = rel.removesuffix(".__init__")
      deps = set()
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("olss_jax"):
          deps.add(node.module)
          deps.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
          deps.update(a.name for a in node.names if a.name.startswith("olss_jax"))
      mods[module] = deps
  return {m: {d for d in ds if d in mods and d != m and d != "olss_jax"
              and not m.startswith(d + ".")} for m, ds in mods.items()}


def _cycles(graph):
  state, found = {}, []

  def visit(node, stack):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        found.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [])
  return found


def test_no_import_cycles_inside_the_package():
  graph = _module_graph()
  assert "olss_jax._src.search" in graph and "olss_jax._src.closed_loop" in graph
  assert _cycles(graph) == []
  # and the check itself finds a cycle when there is one
  graph["olss_jax._src.schedule"].add("olss_jax._src.closed_loop")
  assert _cycles(graph)


def test_the_fitting_layers_import_downward_only():
  graph = _module_graph()
  layers = ["schedule", "noise", "teacher", "linalg", "rows", "trajectory", "validation",
            "stats", "regression", "search", "fit", "closed_loop", "refine", "recipe"]
  rank = {f"olss_jax._src.{name}": i for i, name in enumerate(layers)}
  for module, deps in graph.items():
    for dep in deps:
      if module in rank and dep in rank:
        assert rank[dep] < rank[module] or dep == "olss_jax._src.sharding", (module, dep)
  assert "olss_jax._src.closed_loop" not in graph["olss_jax._src.search"]
  assert "olss_jax._src.closed_loop" not in graph["olss_jax._src.fit"]


def test_a_small_front_door_with_sub_namespaces():
  assert len(oj.__all__) <= 40, len(oj.__all__)
  assert all(hasattr(oj, name) for name in oj.__all__)
  for verb in ("collect_trajectory", "trajectory_stats", "search_path", "fit_weights", "sample",
               "fit_olss", "Schedule", "Trajectory", "TrajectoryStats", "save_schedule",
               "load_schedule", "baseline_schedule", "scaled_linear_alphas_cumprod"):
    assert verb in oj.__all__, verb
  for namespace in ("baselines", "stable_diffusion", "digits", "figures", "store", "testing",
                    "analytic", "stats", "validation", "compare"):
    module = getattr(oj, namespace)
    assert module.__all__ and all(hasattr(module, n) for n in module.__all__), namespace
  public = [n for n in dir(oj) if not n.startswith("_")]
  namespaces = {n for n in public if type(getattr(oj, n)).__name__ == "module"}
  assert set(public) - namespaces <= set(oj.__all__) | {"cli"}, set(public) - namespaces - set(oj.__all__)


def test_importing_the_package_installs_no_warning_filter_and_imports_no_diffusers():
  # The dependencies install filters of their own when imported (jax: numpy's size-changed
  # notices); they are imported first, so only olss_jax's own import is measured.
  code = ("import sys, warnings\n"
          "import jax, numpy, scipy, sklearn, flax, optax, chex, matplotlib, safetensors\n"
          "before = list(warnings.filters)\n"
          "import olss_jax\n"
          "assert warnings.filters == before, 'import olss_jax changed the warning filters'\n"
          "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules\n"
          "print('ok')\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, check=False, cwd=os.path.dirname(PACKAGE))
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
