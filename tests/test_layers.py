"""The package's imports point one way (docs/architecture.md): read from the source's syntax trees, imports
inside functions included, so a cycle cannot hide behind a deferred import."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "data2vec"

# (importer, what it must not import): a module name or a package prefix
FORBIDDEN = [
    ("data2vec.nn", ("data2vec.train", "data2vec.tasks", "data2vec.finetuning", "data2vec.evaluation",
                     "data2vec.interop", "data2vec.data", "data2vec.model", "data2vec.cli")),
    ("data2vec.data", ("data2vec.model", "data2vec.nn", "data2vec.finetuning", "data2vec.train", "data2vec.tasks",
                       "data2vec.evaluation", "data2vec.interop", "data2vec.cli")),
    ("data2vec.interop", ("data2vec.train.loop", "data2vec.train.optim", "data2vec.train.step",
                          "data2vec.train.harness", "data2vec.tasks", "data2vec.cli")),
    ("data2vec.evaluation", ("data2vec.finetuning", "data2vec.tasks", "data2vec.train.loop", "data2vec.cli")),
    ("data2vec.train", ("data2vec.tasks", "data2vec.finetuning", "data2vec.evaluation", "data2vec.interop",
                        "data2vec.cli")),
    ("data2vec.finetuning", ("data2vec.tasks", "data2vec.train.loop", "data2vec.interop", "data2vec.cli")),
    ("data2vec.cli", ("data2vec.train.loop",)),
    ("data2vec.tasks", ("data2vec.interop", "data2vec.cli")),
] + [  # the objective: modules and data below it, nothing that runs or converts it
    (objective, ("data2vec.train", "data2vec.tasks", "data2vec.finetuning", "data2vec.evaluation",
                 "data2vec.interop", "data2vec.cli"))
    for objective in ("data2vec.model", "data2vec.masking", "data2vec.targets", "data2vec.losses", "data2vec.ema")
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body. ``from data2vec.x import y`` counts as
    importing ``data2vec.x.y`` when that is a module, else ``data2vec.x``."""
    this = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "data2vec"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                package = this.split(".") if path.name == "__init__.py" else this.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "data2vec":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != this}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("importer,forbidden", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_layers_import_only_downwards(graph, importer, forbidden):
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if _under(m, importer)
                   for d in deps if any(_under(d, f) for f in forbidden))
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_package_imports_form_no_cycle(graph):
    # The package's own __init__ (the public API, importing tasks lazily) is the top: nothing imports it but
    # the CLI's version query, so edges into it are left out.
    edges = {m: {d for d in deps if d != "data2vec"} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walk_sees_deferred_and_submodule_imports():
    # the checks above can fail: a deferred import and a `from package import submodule` are both seen
    modules = package_modules()
    heads = imports_of(PACKAGE / "nn" / "heads.py", modules)
    assert "data2vec.checkpoint" in heads  # imported inside load_head
    assert "data2vec.tasks.plots" in imports_of(PACKAGE / "tasks" / "report.py", modules)  # from data2vec.tasks import plots
