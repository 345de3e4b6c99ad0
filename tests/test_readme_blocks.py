"""Every ```python block in the README runs as written, on its own, offline.

Each block runs in a fresh namespace (nothing an earlier block defined is visible) with a
temporary working directory (the files it writes land there). A block whose first line is
``# needs: <what>`` (a hub model, say) is skipped with that reason. Blocks are compiled
against README.md's own line numbers, so a traceback points at the README line that failed.
They share one process only so that torch is imported once.
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from interp.world import default_model_path

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS = re.compile(r"#\s*needs:\s*(.+)")
# Blocks that train a subspace or run a steering comparison take minutes on two CPU cores:
# they run with -m slow, and the default run keeps the quick majority.
SLOW_WHEN_CONTAINS = ("interchange_sweep(", "compare_methods(")


@dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first code line
    code: str

    @property
    def needs(self) -> str | None:
        lines = self.code.strip().splitlines()
        match = NEEDS.fullmatch(lines[0].strip()) if lines else None
        return match.group(1).strip() if match else None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, each with the line number of its first code line."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start - 1}: a ```python block is never closed"
            blocks.append(Block(start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def run_block(block: Block, path: Path = README) -> None:
    """Execute one block in a fresh namespace; an error names the block's README line."""
    # Padding puts each statement on its README line, so tracebacks quote the README.
    code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
    try:
        exec(code, {"__name__": "__readme__"})  # noqa: S102 (the README's own code, the point of this test)
    except Exception as err:
        where = [f"{path.name}:{f.lineno}" for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
        raise AssertionError(f"{path.name}:{block.line}: the ```python block starting on that line failed at "
                             f"{where[-1] if where else 'its start'}: {type(err).__name__}: {err}") from err


BLOCKS = python_blocks(README.read_text())


def test_the_parser_finds_blocks_and_their_lines():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# needs: a hub model\ny = 2\n```\n"
    blocks = python_blocks(text)
    assert [(b.line, b.code) for b in blocks] == [(3, "x = 1\n"), (9, "# needs: a hub model\ny = 2\n")]
    assert [b.needs for b in blocks] == [None, "a hub model"]
    assert len(BLOCKS) >= 12, "README.md lost its ```python blocks"
    # Marking blocks as needing something would let them go untested: only the hub example may.
    assert [b.needs for b in BLOCKS if b.needs] == ["hub model (downloads GPT-2)"]


def test_a_failing_block_is_reported_with_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match=r"README.md:42: .* failed at README.md:44: NameError: name 'config'"):
        run_block(Block(42, "import math\n\nprint(config)\n"))


def _param(block: Block):
    slow = any(s in block.code for s in SLOW_WHEN_CONTAINS)
    return pytest.param(block, id=f"README.md:{block.line}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.skipif(not (default_model_path() / "model.safetensors").exists(),
                    reason="the default world model is not built: run `interp world train`")
@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path, monkeypatch):
    if block.needs:
        pytest.skip(f"README.md:{block.line} needs {block.needs}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a block that reaches for the hub fails instead of downloading
    run_block(block)
