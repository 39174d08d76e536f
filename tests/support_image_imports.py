"""What an assembled image's entrypoint imports, and whether the image has it (tests/support_image.py)."""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from support_image import AssembledImage, AssemblyError


def import_problems(image: AssembledImage, context_dir: Path) -> tuple[set[str], list[str]]:
    """(top-level first-party packages the entrypoint reaches, what it imports that the image lacks).

    Follows every import statement from `python -m MODULE` through the modules in the image's
    WORKDIR (where `-m` looks first); a first-party name is one the build context defines at its
    top level. Third-party names are looked up by the image's own python, as its user.
    """
    argv = image.entrypoint
    if len(argv) < 3 or not os.path.basename(argv[0]).startswith("python") or argv[1] != "-m":
        raise AssemblyError(f"entrypoint {argv} is not `python -m MODULE`; the import check needs one")
    app = image.host(image.workdir)
    first_party = {p.name for p in context_dir.iterdir() if (p / "__init__.py").is_file()}
    first_party |= {p.stem for p in context_dir.glob("*.py")}
    reached: set[Path] = set()
    problems: list[str] = []
    third_party: dict[str, str] = {}
    queue = [argv[2], f"{argv[2]}.__main__"]
    while queue:
        path = _module_file(app, queue.pop())
        if path is None or path in reached:
            continue
        reached.add(path)
        module = ".".join(path.relative_to(app).with_suffix("").parts).removesuffix(".__init__")
        where = path.relative_to(app).as_posix()
        for name, may_be_attribute in _imports(path, module, is_package=path.name == "__init__.py"):
            top = name.split(".")[0]
            if top not in first_party:
                if top not in sys.stdlib_module_names and top != "__future__":
                    third_party.setdefault(top, where)
                continue
            if not may_be_attribute and _module_file(app, name) is None:
                problems.append(f"{where} imports {name}, which is not in the image's {image.workdir}")
                continue
            parts = name.split(".")
            queue.extend(".".join(parts[: end + 1]) for end in range(len(parts)))
    if third_party:
        result = image.run(["python", "-c", _FIND_SPECS, *sorted(third_party)])
        if result.returncode != 0:
            raise AssemblyError(f"the image's python cannot run: {result.stderr.strip()[-400:]}")
        for name in json.loads(result.stdout):
            problems.append(f"{third_party[name]} imports {name}, which the image's environment lacks")
    return {path.relative_to(app).parts[0] for path in reached}, problems


_FIND_SPECS = (
    "import importlib.util as u, json, sys;"
    " print(json.dumps([name for name in sys.argv[1:] if u.find_spec(name) is None]))"
)


def _module_file(app: Path, module: str) -> Path | None:
    base = app.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str, *, is_package: bool) -> Iterator[tuple[str, bool]]:
    """(absolute name, whether it may be an attribute) for every import outside `if TYPE_CHECKING:`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for child in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, False) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*prefix, *([node.module] if node.module else [])])
            yield base, False
            yield from ((f"{base}.{alias.name}", True) for alias in node.names if alias.name != "*")
