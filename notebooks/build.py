"""Write the notebooks from their sources: ``notebooks/src/NN_name.py`` -> ``notebooks/NN_name.ipynb``.

The sources are plain Python in the "percent" format (``# %%`` starts a code cell,
``# %% [markdown]`` a markdown cell whose lines start with ``# ``), so they diff and review
like code. The notebooks are written without outputs.

    python notebooks/build.py            # rewrite every notebook
    python notebooks/build.py --check    # exit 1 if a notebook is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"


def cells_of(text: str) -> list[tuple[str, str]]:
    """``(kind, source)`` pairs of a percent-format script; kind is "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' cell marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        source = "\n".join(lines).strip("\n")
        if source:
            out.append((kind, source))
    return out


def notebook_of(source: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nb.cells = [nbformat.v4.new_markdown_cell(s) if kind == "markdown" else nbformat.v4.new_code_cell(s)
                for kind, s in cells_of(source.read_text())]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged source changes nothing
    return nb


def render(source: Path) -> str:
    return nbformat.writes(notebook_of(source)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ from their sources")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        target = HERE / f"{source.stem}.ipynb"
        text = render(source)
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text)
    if args.check and stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale))
        return 1
    if not args.check:
        print("wrote", ", ".join(stale) if stale else "nothing (all up to date)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
