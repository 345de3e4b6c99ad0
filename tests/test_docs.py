"""The README is the user's map: its commands must be the ones CI and users actually run."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> dict[str, str]:
    """The two set-up commands, taken from the README's "Quick start" block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a '## Quick start' section with a bash block"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 2, f"the quick start has exactly two commands, found {lines}"
    return {"main": lines[0], "test": lines[1]}


def test_readme_has_two_setup_commands_main_job_and_tests():
    commands = readme_commands()
    assert commands["main"].endswith("interp quickstart")
    assert "pytest" in commands["test"]
    for command in commands.values():
        # The pinned torch in the same pip call keeps CPU machines on the CPU wheel.
        assert "pip install torch==2.13.0" in command


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()["test"] in [line.strip() for line in ci]


def test_every_error_points_to_a_readme_section_that_exists():
    import inspect
    import re

    import interp.errors
    import saes.errors

    headings = set(re.findall(r"^#{2,3} (.+)$", (ROOT / "README.md").read_text(), flags=re.M))
    classes = [c for m in (interp.errors, saes.errors) for _, c in inspect.getmembers(m, inspect.isclass)
               if issubclass(c, (interp.errors.InterpError, saes.errors.SAEError))]
    assert len(classes) >= 12
    for cls in classes:
        assert cls.readme in headings, f"{cls.__name__} points to README section {cls.readme!r}, which is missing"


def test_error_messages_end_with_their_readme_section(tiny_gpt2_dir):
    import interp
    import saes

    model = interp.load(str(tiny_gpt2_dir))
    with pytest.raises(interp.HookNameError) as err:
        model.check_hooks(["blocks.0.hook_resid_pots"])
    assert "blocks.0.hook_resid_post" in str(err.value)  # the close match
    assert str(err.value).endswith('(see README.md, section "Hooked models")')
    with pytest.raises(saes.ConfigError) as err:
        saes.TopKSAE(8, 4, k=5)
    assert str(err.value).endswith('(see README.md, section "Sparse autoencoders (`saes`)")')
