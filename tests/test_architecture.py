"""The rooms' rules of DESIGN.md, enforced (STYLE G1), and a test of these tests.

Each rule is a function ``check_*(root) -> list[str]`` that walks the source
tree under ``root`` with ``ast`` and lists the offences. The rules are tested
on this checkout (no offence) and on a copy with a violation planted (the
offence is found), so a rule that has stopped seeing anything fails.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ai", "dicom_node", "storage")

#: Top-level names a package must never import.
FORBIDDEN = {
    "ai": {"dicom_node", "storage", "pynetdicom", "sqlalchemy"},
    "storage": {"dicom_node", "pynetdicom"},
}
#: The one place that imports pynetdicom.
NETWORK_PACKAGE = "dicom_node/net"
#: Where ``ai`` may touch files: its readers and phantom writers, and the two
#: file entry points of ``ai/volume.py`` (DICOM series given as paths; NIfTI/MHA).
AI_FILE_IO = {"ai/readers", "ai/phantom"}
AI_FILE_IO_FUNCTIONS = {
    ("ai/volume.py", "_read"),
    ("ai/volume.py", "read_image"),
    ("ai/volume.py", "write_image"),
    ("ai/evaluation/figures.py", "_png"),  # renders into an in-memory buffer
}
#: Calls that read or write files (``np.load``/``torch.save`` style calls by module name).
FILE_CALLS = {
    "open",
    "dcmread",
    "dcmwrite",
    "save_as",
    "ReadImage",
    "WriteImage",
    "savefig",
    "imsave",
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "mkdir",
    "unlink",
    "glob",
    "rglob",
    "iterdir",
}
FILE_MODULE_CALLS = {("np", "load"), ("np", "save"), ("np", "savez"), ("torch", "load"),
                     ("torch", "save"), ("numpy", "load"), ("numpy", "save")}  # fmt: skip
#: What the running node is: the serving entry points.
SERVING = ("dicom_node.app", "dicom_node.cli.serve")
#: Training and evaluation code that serving never imports.
TRAINING = ("ai.hashing.train", "ai.hashing.losses", "ai.hashing.data", "ai.evaluation")
MAX_LINES = 600
MAX_TOP_LEVEL_MODULES = 8


def _python_files(root: Path, package: str) -> Iterator[Path]:
    yield from sorted((root / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, ast.AST]]:
    """Every imported module name (absolute), with its node, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node))
            found += [(f"{node.module}.{alias.name}", node) for alias in node.names]
    return found


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def check_forbidden_imports(root: Path) -> list[str]:
    """``ai`` and ``storage`` import none of the packages above them."""
    offences = []
    for package, forbidden in FORBIDDEN.items():
        for path in _python_files(root, package):
            bad = {name.split(".")[0] for name, _ in _imports(path)} & forbidden
            if bad:
                offences.append(f"{_relative(root, path)} imports {sorted(bad)}")
    return offences


def check_only_net_imports_pynetdicom(root: Path) -> list[str]:
    """pynetdicom is imported under ``dicom_node/net`` and nowhere else."""
    offences = []
    for package in PACKAGES:
        for path in _python_files(root, package):
            where = _relative(root, path)
            if where.startswith(NETWORK_PACKAGE + "/"):
                continue
            if any(name.split(".")[0] == "pynetdicom" for name, _ in _imports(path)):
                offences.append(f"{where} imports pynetdicom")
    return offences


def _call_name(call: ast.Call) -> tuple[str | None, str | None]:
    func = call.func
    if isinstance(func, ast.Name):
        return None, func.id
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    return None, None


def check_ai_file_io(root: Path) -> list[str]:
    """``ai`` reads and writes files only where :data:`AI_FILE_IO` says."""
    offences = []
    for path in _python_files(root, "ai"):
        where = _relative(root, path)
        if any(where.startswith(prefix + "/") for prefix in AI_FILE_IO):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            owner, name = _call_name(node)
            if name not in FILE_CALLS and (owner, name) not in FILE_MODULE_CALLS:
                continue
            inside = [f.name for f in functions if f.lineno <= node.lineno <= (f.end_lineno or 0)]
            if not any((where, f) in AI_FILE_IO_FUNCTIONS for f in inside):
                offences.append(f"{where}:{node.lineno} calls {name} (file I/O)")
    return offences


def _module_files(root: Path) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in _python_files(root, package):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_closure(root: Path, start: tuple[str, ...]) -> set[str]:
    """Our modules reached from ``start`` by any import, module level or lazy."""
    modules = _module_files(root)
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += [imported for imported, _ in _imports(modules[name]) if imported in modules]
    return seen


def check_serving_never_imports_training(root: Path) -> list[str]:
    """The node's modules never reach training or evaluation code."""
    reached = import_closure(root, SERVING)
    return [
        f"serving reaches {name}"
        for name in sorted(reached)
        if any(name == t or name.startswith(t + ".") for t in TRAINING)
    ]


def check_processing_does_not_know_results(root: Path) -> list[str]:
    """The processing steps never import the results step (the job runner orders them)."""
    offences = []
    for path in _python_files(root, "dicom_node/processing"):
        if any(name.startswith("dicom_node.results") for name, _ in _imports(path)):
            offences.append(f"{_relative(root, path)} imports dicom_node.results")
    return offences


def check_module_sizes(root: Path) -> list[str]:
    """No module over :data:`MAX_LINES` lines; few modules at the top of ``dicom_node``."""
    offences = [
        f"{_relative(root, path)} has {n} lines (over {MAX_LINES})"
        for package in PACKAGES
        for path in _python_files(root, package)
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    top = sorted(p.name for p in (root / "dicom_node").glob("*.py"))
    if len(top) > MAX_TOP_LEVEL_MODULES:
        offences.append(f"dicom_node/ has {len(top)} top-level modules: {top}")
    return offences


def check_tests_share_helpers_not_test_modules(root: Path) -> list[str]:
    """A test module never imports another test module (helpers live in helper modules)."""
    offences = []
    for path in sorted((root / "tests").rglob("*.py")):
        for name, _ in _imports(path):
            if any(part.startswith("test_") for part in name.split(".")[1:]) and name.startswith(
                "tests."
            ):
                offences.append(f"{_relative(root, path)} imports {name}")
    return offences


CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "forbidden imports": check_forbidden_imports,
    "pynetdicom only in dicom_node/net": check_only_net_imports_pynetdicom,
    "ai file I/O only in readers and phantom": check_ai_file_io,
    "serving never imports training": check_serving_never_imports_training,
    "processing does not know results": check_processing_does_not_know_results,
    "module sizes": check_module_sizes,
    "tests import no test module": check_tests_share_helpers_not_test_modules,
}


@pytest.mark.parametrize("rule", sorted(CHECKS))
def test_the_checkout_keeps_the_rule(rule: str) -> None:
    offences = CHECKS[rule](ROOT)
    assert not offences, "\n".join(offences)


def test_serving_closure_is_the_node_not_nothing() -> None:
    reached = import_closure(ROOT, SERVING)
    expected = {"dicom_node.processing.analysis", "dicom_node.results.step", "ai.pipeline",
                "storage.index", "dicom_node.model", "ai.hashing.serialization"}  # fmt: skip
    assert expected <= reached


#: (rule, file to change, text to add, what the offence names)
PLANTED = [
    ("forbidden imports", "ai/roi.py", "import storage.catalog\n", "ai/roi.py imports ['storage']"),
    ("forbidden imports", "storage/uids.py", "from dicom_node import errors\n", "dicom_node"),
    ("pynetdicom only in dicom_node/net", "dicom_node/results/outbox.py",
     "from pynetdicom import AE\n", "dicom_node/results/outbox.py imports pynetdicom"),
    ("ai file I/O only in readers and phantom", "ai/roi.py",
     "def _dump(path):\n    return open(path).read()\n", "ai/roi.py:"),
    ("ai file I/O only in readers and phantom", "ai/pipeline.py",
     "def _cache(a):\n    np.save('x.npy', a)\n", "calls save"),
    ("serving never imports training", "dicom_node/model.py",
     "def _train():\n    from ai.hashing.train import train\n", "serving reaches ai.hashing.train"),
    ("processing does not know results", "dicom_node/processing/jobs.py",
     "from dicom_node.results import step\n", "dicom_node/processing/jobs.py imports"),
    ("module sizes", "storage/uids.py", "#\n" * 600, "storage/uids.py has"),
    ("module sizes", "dicom_node/extra_1.py", "", "top-level modules"),
    ("tests import no test module", "tests/unit/ai/test_nodules.py",
     "from tests.unit.ai.test_lungs import dice\n", "imports tests.unit.ai.test_lungs"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "target", "text", "expected"), PLANTED)
def test_a_planted_violation_is_found(tmp_path, rule, target, text, expected) -> None:
    for package in (*PACKAGES, "tests"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc",
                        "__pycache__", "weights"))  # fmt: skip
    assert not CHECKS[rule](tmp_path), "the copy must be clean before the violation"
    path = tmp_path / target
    if target.startswith("dicom_node/extra"):
        for i in range(MAX_TOP_LEVEL_MODULES):
            (tmp_path / "dicom_node" / f"extra_{i}.py").write_text("")
    else:
        path.write_text(path.read_text(encoding="utf-8") + "\n" + text, encoding="utf-8")
    offences = CHECKS[rule](tmp_path)
    assert any(expected in offence for offence in offences), offences


def test_top_level_packages_are_ours() -> None:
    import ai
    import storage

    assert Path(ai.__file__).resolve().parent == ROOT / "ai"
    assert Path(storage.__file__).resolve().parent == ROOT / "storage"
