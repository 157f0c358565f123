"""Build an output-free notebook from a list of cells. Usage in a script:
    from nbbuild import md, code, params, write
    write("notebooks/01_data.ipynb", [md("# Title"), params("data = None"), code("x = 1")])
"""
import nbformat

def _checked(src):
    # a backslash sequence in a plain (not raw) string turns "$\\tau$" into a TAB and "au":
    # a control character in a cell is such a typo, never text (write the string as r"""...""")
    i = next((i for i, ch in enumerate(src) if ord(ch) < 32 and ch != "\n"), None)
    if i is not None:
        raise ValueError(f"cell source holds the control character {src[i]!r} (a backslash escape in a string "
                         f"that is not raw?) at: {src[max(0, i - 40):i + 20]!r}")
    return src.strip("\n")

def md(src): return nbformat.v4.new_markdown_cell(_checked(src))
def code(src): return nbformat.v4.new_code_cell(_checked(src))
def params(src):
    c = nbformat.v4.new_code_cell(_checked(src)); c.metadata["tags"] = ["parameters"]; return c

def write(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (qlib)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    stem = path.rsplit("/", 1)[-1][:2]
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{stem}-{i:02d}"
    nbformat.write(nb, path)
