"""Every Python package and every data file in the source tree is declared in
pyproject.toml, so a wheel install has everything an editable one has."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    mapping = conf["package-dir"]
    found = set()
    for name, src in mapping.items():
        base = ROOT / src
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            parts = [p for p in rel.parts if p]
            found.add(".".join([name, *parts]))
    missing = sorted(found - listed)
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"


def test_every_data_file_is_declared() -> None:
    # include-package-data is off, so a data file ships only if a package-data glob
    # names it; a new kind of file under a package directory must be declared too.
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["include-package-data"] is False
    mapping = conf["package-dir"]
    declared = {path for pkg, globs in conf["package-data"].items() for pattern in globs
                for path in (ROOT / mapping[pkg]).glob(pattern)}
    present = {path for src in mapping.values() for path in (ROOT / src).rglob("*")
               if path.is_file() and path.suffix not in (".py", ".pyc")
               and not any(part.startswith((".", "__pycache__")) for part in path.relative_to(ROOT).parts)}
    undeclared = sorted(str(p.relative_to(ROOT)) for p in present - declared)
    assert not undeclared, f"add these to [tool.setuptools.package-data] in pyproject.toml: {undeclared}"
