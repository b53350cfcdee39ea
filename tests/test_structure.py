"""The package's shape: no import circle among its modules, and an install that holds only
`solv_jax` (the recipes in configs/ stay in the repository)."""
import ast
import os
import tomllib

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
  """{'solv_jax.models.solv': path} for every module of the package."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "solv_jax")):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = os.path.join(folder, name)
  return out


def import_graph() -> dict[str, set[str]]:
  """module -> the package modules it imports, at module level or inside a function (a lazy
  import is still a dependency). `from solv_jax.a import b` counts as solv_jax.a.b when b is a
  module, else as solv_jax.a."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
      else:
        continue
      for name in names:
        while name and name not in modules:  # solv_jax.x.Thing -> solv_jax.x
          name = name.rpartition(".")[0]
        if name and name != module and name != "solv_jax":
          deps.add(name)
    graph[module] = deps
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_among_the_package_modules():
  graph = import_graph()
  assert graph["solv_jax.segment"] >= {"solv_jax.inference", "solv_jax.outputs",
                                       "solv_jax.video_io"}  # the graph sees imports
  assert cycles(graph) == []


def test_the_install_holds_only_the_solv_jax_package():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
  packages = setuptools.find_packages(ROOT, include=find["include"],
                                      exclude=find.get("exclude", ()))
  assert "solv_jax" in packages and "solv_jax.models" in packages
  assert all(p == "solv_jax" or p.startswith("solv_jax.") for p in packages), packages
