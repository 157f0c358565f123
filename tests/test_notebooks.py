"""The chapters' sources as text: a backslash escape in a generator's plain string (``"$\\tau$"``
written without ``r``) silently becomes a control character ("\\t" + "au") that MathJax renders
as broken maths, and an invalid escape in a code cell is a SyntaxWarning on newer Pythons."""
import json
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every control character but the newline
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("book/*.ipynb"))

sys.path.insert(0, str(ROOT / "notebooks" / "src"))
import nbbuild  # noqa: E402


def _texts(nb):
    """(where, text) of every cell's source and every Markdown output."""
    for i, cell in enumerate(nb["cells"]):
        yield f"cell {i} ({cell['cell_type']})", "".join(cell["source"])
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown")
            if md:
                yield f"cell {i} Markdown output", "".join(md)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_control_characters_in_cells_or_markdown_outputs(path):
    bad = [(where, m.group(), text[max(0, m.start() - 30):m.end() + 10])
           for where, text in _texts(json.loads(path.read_text())) for m in [CONTROL.search(text)] if m]
    assert not bad, f"{path.name}: control characters (a backslash escape in a plain string?): {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_code_cells_compile_without_warnings(path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        src = "\n".join(line for line in src.split("\n") if not line.lstrip().startswith(("%", "!")))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an invalid escape ("\p") is a Deprecation/SyntaxWarning
            compile(src, f"{path.name} cell {i}", "exec")


def test_generator_cells_refuse_control_characters():
    assert nbbuild.md(r"$\tau$").source == r"$\tau$"
    with pytest.raises(ValueError, match=r"control character '\\t'.*not raw"):
        nbbuild.md("$\tau$")  # the typo: "\t" is a TAB
    with pytest.raises(ValueError, match="control character"):
        nbbuild.code('print("\a")')
