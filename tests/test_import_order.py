"""Imports go one way: alrt_core <- export <- serve <- alrt_cli; a package imports none of those after it.

Every import counts: at module level or inside a function (a lazy import is a dependency all the same), `import x`
and `from x import y`, absolute or relative (resolved against the importing file's package).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("alrt_core", "export", "serve", "alrt_cli")  # each may import only itself and the ones before it


def package_of(path: Path) -> str:
    """The dotted package a file (relative to the repository root) belongs to; a relative import starts there."""
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1])


def imports(source: str, path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, imported module, the statement) for every import in `source`, the text of the file at `path`."""
    package = package_of(path).split(".")
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module, ast.unparse(node)


def violations(source: str, path: Path) -> list[str]:
    """`file:line: statement (why)` for each import in `source` of a package that comes after the file's own."""
    own = path.parts[0]
    later = LAYERS[LAYERS.index(own) + 1 :]
    return [f"{path.as_posix()}:{line}: {statement} ({own} may not import {module.split('.')[0]})"
            for line, module, statement in sorted(imports(source, path)) if module.split(".")[0] in later]


def layer_files() -> list[Path]:
    return sorted(file.relative_to(ROOT) for layer in LAYERS for file in (ROOT / layer).rglob("*.py"))


def test_no_package_imports_one_that_comes_after_it():
    files = layer_files()
    assert {file.parts[0] for file in files} == set(LAYERS)  # every layer was found and read
    found = [problem for file in files for problem in violations((ROOT / file).read_text(encoding="utf-8"), file)]
    assert not found, "imports against the order " + " < ".join(LAYERS) + ":\n" + "\n".join(found)


def test_the_checker_catches_a_lazy_import_against_the_order():
    source = textwrap.dedent("""\
        from alrt_core.data.tokenizer import Tokenizer
        from . import sampling
        from ..model.gpt import GPT


        def decode():
            from serve.x import y
            return y
        """)
    path = Path("alrt_core/inference/fake.py")
    assert [module for _, module, _ in sorted(imports(source, path))] == [
        "alrt_core.data.tokenizer", "alrt_core.inference", "alrt_core.model.gpt", "serve.x"]
    assert violations(source, path) == [
        "alrt_core/inference/fake.py:7: from serve.x import y (alrt_core may not import serve)"]
