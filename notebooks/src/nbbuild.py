"""Build an output-free notebook from a list of cells. Usage in a script:
    from nbbuild import md, code, params, write
    write("notebooks/01_data.ipynb", [md("# Title"), params("data = None"), code("x = 1")])
"""
import nbformat

def md(src): return nbformat.v4.new_markdown_cell(src.strip("\n"))
def code(src): return nbformat.v4.new_code_cell(src.strip("\n"))
def params(src):
    c = nbformat.v4.new_code_cell(src.strip("\n")); c.metadata["tags"] = ["parameters"]; return c

def write(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (qlib)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    stem = path.rsplit("/", 1)[-1][:2]
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{stem}-{i:02d}"
    nbformat.write(nb, path)
