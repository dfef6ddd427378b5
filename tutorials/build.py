"""Builds the tutorial notebooks (``NN_name.ipynb``) from their sources in ``src/NN_name.md``.

A source is Markdown with code cells fenced as in MyST/Jupytext::

    Prose becomes a Markdown cell; a line holding only ``+++`` starts a new one.

    ```{code-cell}
    print("a code cell")
    ```

    ```{code-cell}
    :tags: [raises-exception]
    1 / 0          # a cell meant to fail: the tests run past it
    ```

Front matter between ``---`` lines at the very top becomes the notebook's ``nebula``
metadata (``key: value`` lines, values split on commas), e.g. ``requires: multi_node``.
Notebooks are written with outputs empty and execution counts null, and cell ids derived
from the file name, so a rebuild of an unchanged source changes nothing.

    python tutorials/build.py           # rebuild every notebook
    python tutorials/build.py --check   # exit 1 if a notebook is stale or carries outputs
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
CODE_OPEN, CODE_CLOSE, CELL_BREAK = "```{code-cell}", "```", "+++"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def split_front_matter(lines: list[str]) -> tuple[dict, list[str]]:
    """The ``key: value`` front matter (values as lists) and the lines after it."""
    if not lines or lines[0].strip() != "---":
        return {}, lines
    end = lines.index("---", 1)
    meta = {}
    for line in lines[1:end]:
        key, _, value = line.partition(":")
        meta[key.strip()] = [v.strip() for v in value.split(",") if v.strip()]
    return meta, lines[end + 1:]


def parse_cells(lines: list[str]) -> list[tuple[str, str]]:
    """(kind, text) for each cell of a source, kind being "markdown" or "code".

    A code cell's text keeps a leading ``:tags: [...]`` line; ``split_tags`` takes it off.
    """
    cells, chunk, in_code = [], [], False
    for line in lines:
        if not in_code and line.strip() in (CODE_OPEN, CELL_BREAK):
            cells.append(("markdown", "\n".join(chunk)))
            chunk, in_code = [], line.strip() == CODE_OPEN
        elif in_code and line.rstrip() == CODE_CLOSE:
            cells.append(("code", "\n".join(chunk)))
            chunk, in_code = [], False
        else:
            chunk.append(line)
    if in_code:
        raise ValueError("a ```{code-cell} block is not closed")
    cells.append(("markdown", "\n".join(chunk)))
    return [(kind, text.strip("\n")) for kind, text in cells if text.strip()]


def split_tags(text: str) -> tuple[list[str], str]:
    """The tags of a ``:tags: [a, b]`` first line of a code cell, and the code after it."""
    first, _, rest = text.partition("\n")
    if not first.startswith(":tags:"):
        return [], text
    tags = first[len(":tags:"):].strip().strip("[]")
    return [t.strip() for t in tags.split(",") if t.strip()], rest


def build_notebook(source: Path) -> nbformat.NotebookNode:
    meta, lines = split_front_matter(source.read_text().splitlines())
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    if meta:
        nb.metadata["nebula"] = meta
    for index, (kind, text) in enumerate(parse_cells(lines)):
        if kind == "code":
            tags, code = split_tags(text)
            cell = nbformat.v4.new_code_cell(code, metadata={"tags": tags} if tags else {})
        else:
            cell = nbformat.v4.new_markdown_cell(text)
        cell.id = hashlib.sha1(f"{source.stem}:{index}".encode()).hexdigest()[:12]
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def notebook_path(source: Path) -> Path:
    return HERE / f"{source.stem}.ipynb"


def rendered(source: Path) -> str:
    return nbformat.writes(build_notebook(source)) + "\n"


def stale_notebooks() -> list[str]:
    """Problems with the committed notebooks: missing, out of date with src/, or orphaned."""
    problems = []
    sources = sorted(SOURCES.glob("*.md"))
    for source in sources:
        path = notebook_path(source)
        if not path.exists() or path.read_text() != rendered(source):
            problems.append(f"{path.name} is missing or differs from src/{source.name}")
    built = {notebook_path(s).name for s in sources}
    problems += [f"{p.name} has no source in src/" for p in HERE.glob("*.ipynb") if p.name not in built]
    return problems


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = stale_notebooks()
        for problem in problems:
            print(problem, "(run: python tutorials/build.py)")
        return 1 if problems else 0
    for source in sorted(SOURCES.glob("*.md")):
        notebook_path(source).write_text(rendered(source))
        print("wrote", notebook_path(source).relative_to(HERE.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
