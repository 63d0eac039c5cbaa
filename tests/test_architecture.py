"""The package rules of DESIGN.md, enforced (STYLE G1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "ai": {"dicom_node", "storage", "pynetdicom", "sqlalchemy"},
    "storage": {"dicom_node", "pynetdicom"},
}


def _imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_modules(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_level_names(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_only_dicom_node_imports_pynetdicom() -> None:
    for package in ("ai", "storage"):
        for path in (ROOT / package).rglob("*.py"):
            assert "pynetdicom" not in _imported_top_level_names(path), path


def test_top_level_packages_are_ours() -> None:
    import ai
    import storage

    assert Path(ai.__file__).resolve().parent == ROOT / "ai"
    assert Path(storage.__file__).resolve().parent == ROOT / "storage"
