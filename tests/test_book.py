"""The built book as a reader sees it, offline.

Builds the published book — the chapters executed on the real data, committed in book/ — the
way `make book` ends (`make html`, jupyter-book) in a temporary copy of the project, and then:

- checks the HTML files: every page of _toc.yml is built, no output shows an error or a
  traceback, and no page loads a script or style sheet from another host;
- serves _build/html on 127.0.0.1 and opens every page in headless Chromium (Debian's
  `chromium` + `chromium-driver`, driven by selenium; `make test` installs them), with every
  host name but 127.0.0.1 unresolvable, as on a machine without internet: its figures load,
  its math is typeset by MathJax (no raw TeX left), its widgets are drawn from the saved widget
  state, the page sends no request off the machine and logs no error.

A screenshot of every whole page is saved (to $QLIB_BOOK_SCREENSHOTS if set, else beside
the temporary build); the failure messages name them. The browser checks skip, saying why,
only where chromium or chromedriver is not installed.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Left out of the copy: what the build makes or installs.
SKIP = {".git", ".venv", ".cache", "_build", ".hypothesis", ".pytest_cache", "__pycache__",
        ".ipynb_checkpoints", "node_modules"}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
BUILD_TIMEOUT = 1200  # s; the HTML build takes a minute or two


def toc_files(toc: dict) -> list[str]:
    """The `file` entries of a Jupyter Book _toc.yml, root first, in reading order."""
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node and node is not toc:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


def _ignore(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n in SKIP or n.endswith(".egg-info")]


class Page:
    """One page of the toc: its source, its built HTML, and what its notebook says it shows."""

    def __init__(self, project: Path, name: str):
        self.name = name
        self.html_path = project / "_build" / "html" / f"{name}.html"
        self.html = self.html_path.read_text(encoding="utf-8") if self.html_path.exists() else ""
        self.notebook = None
        nb_path = project / f"{name}.ipynb"
        if nb_path.exists():
            self.notebook = json.loads(nb_path.read_text(encoding="utf-8"))

    def outputs(self):
        for cell in (self.notebook or {}).get("cells", []):
            yield from cell.get("outputs", [])

    @property
    def n_images(self) -> int:
        return sum(any(m in o.get("data", {}) for m in IMAGE_MIMES) for o in self.outputs())

    @property
    def widget_models(self) -> dict:
        state = (self.notebook or {}).get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {})
        return state.get("state", {})

    def widget_views(self) -> list[str]:
        """The model ids of the widget outputs whose model is in the saved state (those the
        book can draw)."""
        models = self.widget_models
        ids = [o.get("data", {}).get(WIDGET_VIEW, {}).get("model_id") for o in self.outputs()]
        return [i for i in ids if i in models]

    def shown_widget_kinds(self) -> set[str]:
        """Model names of the widgets that the widget outputs show, children included."""
        models, todo, seen = self.widget_models, self.widget_views(), set()
        while todo:
            model_id = todo.pop()
            if model_id in seen or model_id not in models:
                continue
            seen.add(model_id)
            todo += re.findall(r"IPY_MODEL_(\w+)", json.dumps(models[model_id].get("state", {})))
        return {models[i].get("model_name", "") for i in seen}

    @property
    def has_math(self) -> bool:
        return 'class="math' in self.html


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> dict:
    """Copy the project with its executed chapters (book/), run `make html` in it, return the copy
    and its pages. The chapters themselves run top to bottom in smoke mode under nbval (`make
    nbval`, part of `make test`): executing them here too would double the test's time."""
    work = tmp_path_factory.mktemp("book")
    project = work / "project"
    shutil.copytree(ROOT, project, ignore=_ignore, symlinks=True)
    venv = Path(sys.prefix)  # the venv running this test: `make test` has installed it
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")])))
    log = work / "make-html.log"
    start = time.monotonic()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(
                ["make", "-C", str(project), f"VENV={venv}", "-o", f"{venv}/.installed", "html"],
                env=env, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make html took over {BUILD_TIMEOUT} s; log: {log}")
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"make html failed with exit code {proc.returncode}; log: {log}\n{tail}")
    toc = yaml.safe_load((project / "_toc.yml").read_text())
    pages = [Page(project, name) for name in toc_files(toc)]
    print(f"make html took {seconds:.0f} s")
    return {"project": project, "pages": pages, "work": work}


def test_every_toc_page_is_built(book):
    missing = [p.name for p in book["pages"] if not p.html]
    assert not missing, f"pages of _toc.yml not built: {missing}"
    chapters = [p for p in book["pages"] if p.notebook is not None]
    assert chapters, "no chapter notebook in _toc.yml was executed into book/"


def test_no_output_shows_an_error(book):
    problems = []
    for page in book["pages"]:
        for out in page.outputs():
            if out.get("output_type") == "error":
                problems.append(f"{page.name}: error output {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                if re.search(r"Warning\b", text):
                    warnings.warn(f"{page.name} shows a warning to readers: {text.strip()[:300]}")
        if 'class="output traceback' in page.html or "Traceback (most recent call last)" in page.html:
            problems.append(f"{page.name}: the page shows a traceback")
    assert not problems, "\n".join(problems)


def test_pages_load_nothing_from_other_hosts(book):
    """A reader offline gets every script and style sheet from the book itself."""
    remote = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"")
    found = {p.name: remote.findall(p.html) for p in book["pages"]}
    found = {name: urls for name, urls in found.items() if urls}
    assert not found, f"pages load scripts or style sheets from other hosts: {found}"
    static = book["project"] / "_build" / "html" / "_static"
    for needed in ("mathjax/tex-chtml.js", "widgets/require.js", "widgets/embed-amd.js"):
        assert (static / needed).is_file(), f"_static/{needed} is missing from the build"


# ---------------------------------------------------------------------------- the browser

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(book):
    """`python -m http.server` on 127.0.0.1 (a free port), serving _build/html."""
    handler = functools.partial(_QuietHandler, directory=str(book["project"] / "_build" / "html"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def start_chromium(profile: str):
    """Debian's chromium through its chromedriver, headless, with a new empty profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,1000",
                 # as offline: no host name resolves but the loopback address
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver or browser
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(90)
    return driver


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian packages chromium and "
                    "chromium-driver; `make test` installs them when run as root)")
    profile = tempfile.mkdtemp(prefix="qlib-chromium-")
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Runs in the page once it has loaded: waits for MathJax's first typeset, for the widget views
# to be drawn from the saved state and for the images, then reports what a reader sees.
INSPECT_JS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  while (document.readyState !== 'complete') await sleep(50);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const modelIds = new Set();
  for (const tag of document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]'))
    Object.keys(JSON.parse(tag.textContent).state || {}).forEach(id => modelIds.add(id));
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
    .filter(v => modelIds.has(JSON.parse(v.textContent).model_id));
  const drawn = v => {
    const area = v.previousElementSibling;
    return !!(area && area.classList.contains('widget-subarea') && area.querySelector('.jupyter-widgets')
              && area.getBoundingClientRect().height > 0);
  };
  while (views.some(v => !drawn(v)) && Date.now() - t0 < 30000) await sleep(100);
  await Promise.all([...document.images].map(img => img.complete ? null :
    new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); })));
  // Text a reader sees, outside code, scripts and typeset math.
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode())
    if (!n.parentElement.closest(skip)) texts.push(n.textContent);
  const maths = [...document.querySelectorAll('.math')];
  done({
    images: [...document.images].map(i => ({src: (i.getAttribute('src') || '').slice(0, 100), width: i.naturalWidth})),
    outputImages: document.querySelectorAll('.cell_output img').length,
    mathjax: !!(window.MathJax && MathJax.version), mathjaxVersion: window.MathJax && MathJax.version,
    maths: maths.length, untypeset: maths.filter(m => !m.querySelector('mjx-container')).length,
    mjx: document.querySelectorAll('mjx-container').length,
    text: texts.join(' '),
    views: views.length, drawn: views.filter(drawn).length,
    widgets: document.querySelectorAll('.jupyter-widgets').length,
    widgetClasses: [...new Set([...document.querySelectorAll('.widget-subarea *')]
      .flatMap(e => [...e.classList]).filter(c => c.startsWith('widget-')))],
    tracebacks: document.querySelectorAll('.output.traceback, .output.error').length,
    seconds: (Date.now() - t0) / 1000,
  });
})().catch(e => done({failed: String(e && e.stack || e)}));
"""

# Console errors that every Jupyter Book 1 page logs and that change nothing a reader sees.
CONSOLE_NOISE = re.compile("|".join([
    r"favicon\.ico",  # the book has no icon
    # jupyter-book 1.0.4 adds sphinx-thebe's inline config script twice; the second copy fails
    # (its thebe launch button is not configured in this book)
    r"Identifier 'THEBE_JS_URL' has already been declared",
    r"Got invalid theme mode",  # pydata-sphinx-theme, on a first visit (empty localStorage)
]))

RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")


def _screenshot(driver, path: Path) -> None:
    """The whole page as a reader's 1280-pixel-wide window shows it, top to bottom, as a PNG."""
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(max(height + 200, size["height"]), 16000))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])


def _open(driver, url: str, tries: int = 3) -> None:
    """Load a page; on a machine busy with other work the renderer can time out: try again."""
    from selenium.common.exceptions import TimeoutException

    for attempt in range(tries):
        try:
            driver.get(url)
            return
        except TimeoutException:
            if attempt == tries - 1:
                raise


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_pages_render_offline_in_chromium(book, server, browser):
    shots = Path(os.environ.get("QLIB_BOOK_SCREENSHOTS") or book["work"] / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    problems, seen = [], []
    for page in book["pages"]:
        if not page.html:
            problems.append(f"{page.name}: not built")
            continue
        browser.get_log("performance")
        browser.get_log("browser")
        _open(browser, f"{server}/{page.name}.html")
        report = browser.execute_async_script(INSPECT_JS)
        shot = shots / f"{page.name.replace('/', '_')}.png"
        _screenshot(browser, shot)
        where = f"{page.name} (screenshot {shot})"
        seen.append(f"{page.name}: {report.get('outputImages')} figures, {report.get('mjx')} formulas, "
                    f"{report.get('drawn')} widgets, {report.get('seconds')} s")
        if "failed" in report:
            problems.append(f"{where}: inspecting the page failed: {report['failed']}")
            continue
        broken = [i["src"] for i in report["images"] if not i["width"]]
        if broken:
            problems.append(f"{where}: images that do not load: {broken}")
        if report["outputImages"] < page.n_images:
            problems.append(f"{where}: {page.n_images} figures in the notebook, "
                            f"{report['outputImages']} on the page")
        if page.has_math and not (report["mathjax"] and report["mjx"]):
            problems.append(f"{where}: the page has math but MathJax did not typeset it")
        if report["untypeset"]:
            problems.append(f"{where}: {report['untypeset']} of {report['maths']} formulas not typeset")
        raw = sorted({m.group(0)[:60] for m in RAW_TEX.finditer(report["text"])})
        if raw:
            problems.append(f"{where}: raw TeX left in the text: {raw[:10]}")
        if report["views"] != len(page.widget_views()):
            problems.append(f"{where}: {len(page.widget_views())} widget outputs with saved state "
                            f"in the notebook, {report['views']} on the page")
        if report["drawn"] < report["views"] or (report["views"] and not report["widgets"]):
            problems.append(f"{where}: {report['drawn']} of {report['views']} widgets drawn "
                            "from the saved state")
        shown = page.shown_widget_kinds()
        for kind in ("Slider", "Progress", "Dropdown", "Button"):
            if (any(kind in m for m in shown)
                    and not any(kind.lower() in c for c in report["widgetClasses"])):
                problems.append(f"{where}: the saved widget state has a {kind}, none is drawn")
        if report["tracebacks"]:
            problems.append(f"{where}: {report['tracebacks']} outputs show an error")
        remote = [u for u in _requests(browser)
                  if urlparse(u).scheme in ("http", "https", "ws", "wss")
                  and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
        if remote:
            problems.append(f"{where}: requests that leave the machine: {sorted(set(remote))}")
        errors = [e["message"] for e in browser.get_log("browser")
                  if e["level"] == "SEVERE" and not CONSOLE_NOISE.search(e["message"])]
        if errors:
            problems.append(f"{where}: errors in the browser console: {errors[:5]}")
    print("\n".join(seen))
    assert not problems, "\n".join(problems)
