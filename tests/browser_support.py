"""The Chromium the browser tests (and bench/'s browser measures) launch, and its arguments.

Debian's chromium-headless-shell (`make chromium` installs it beside chromium): the same Blink and
V8 build without the full browser's window and UI layers. On the suite's journeys it spent ~22 %
less CPU than `chromium --headless` for the same pages (issue 26 item 7: the suite is CPU-bound on
2 cores, and Chromium was its largest consumer). Where only the full browser is installed, that.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HEADLESS_SHELL = "/usr/bin/chromium-headless-shell"
FULL_CHROMIUM = "/usr/bin/chromium"
CHROMIUM = HEADLESS_SHELL if os.access(HEADLESS_SHELL, os.X_OK) else FULL_CHROMIUM
# The real FiftyOne App's journeys (test_app21_*, test_plugin, test_fiftyone_app) ran in the full
# browser for a while: under a whole suite's load the App's grid kept a tile without its map, once in
# six runs in the headless shell and once in chromium. That was FiftyOne 1.22's looker dropping a
# redraw (a DataCloneError), in either browser; the plugin mends it and every App journey fails on one
# (fo_app_page.overlapping_redraws), so they share the lighter shell again.
APP_CHROMIUM = CHROMIUM
# Without the background-networking flags Chromium tries hosts this closed network refuses. Without
# --font-render-hinting=none the headless shell rounds glyph advances to whole pixels (Streamlit's
# Source Sans 16 px: 336 px where chromium draws 324.5), and the tests of names and titles that fit
# would measure text wider than a user's browser draws it; with it, both measure the same.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--font-render-hinting=none"]
# More flags from the environment, to measure what a flag costs or saves (bench/suite_cpu.py).
CHROMIUM_ARGS += os.environ.get("CAM_TEST_CHROMIUM_ARGS", "").split()

# The explorer's pages hold still in the tests: every CSS animation runs one 0.01-ms cycle and every
# transition ends at once (the usual reduced-motion rule; their end events still fire, so dialogs and
# expanders open and close as they do for a user). Why: a page whose script runs shows Streamlit's
# spinner and running indicator, animated at 60 frames a second: 1.7 CPU-s of Chromium per 15 s of
# waiting, 0.55 with this (bench/RESULTS.md, 2026-12-06), and the journeys wait on running pages for
# minutes under the suite's load. Nothing a test checks moves: no page of ours animates anything.
STILL_CSS = ("*, *::before, *::after { animation-duration: 0.01ms !important; "
             "animation-iteration-count: 1 !important; transition-duration: 0.01ms !important; "
             "transition-delay: 0s !important; animation-delay: 0s !important; }")
STILL_SCRIPT = f"""(() => {{
  const add = () => {{
    const style = document.createElement("style");
    style.textContent = {STILL_CSS!r};
    (document.head || document.documentElement).appendChild(style);
  }};
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", add); else add();
}})();"""


def hold_still(browser):
    """`browser`, whose new contexts' pages hold still (STILL_CSS)."""
    new_context = browser.new_context

    def still_context(**options):
        context = new_context(**options)
        context.add_init_script(STILL_SCRIPT)
        return context

    browser.new_context = still_context
    return browser


def again_until(act, came, between=lambda: None, tries: int = 3) -> None:
    """As a user would under load: act(), then came() (it raises, an AssertionError or Playwright's
    TimeoutError, when what the act should bring has not come in its wait); when it has not,
    between() and act again, `tries` times at most. The last try's failure is raised: an act that
    never brings it still fails. For the clicks a whole suite's load once lost (a list closed before
    its option showed, a click during a rerun or a chart's redraw). Each act made again is a warning
    in pytest's summary: how often the load takes a user's act is seen, not hidden."""
    import warnings

    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for attempt in range(tries):
        act()
        try:
            came()
            return
        except (AssertionError, PlaywrightTimeoutError) as exc:
            if attempt == tries - 1:
                raise
            warnings.warn(f"made again (try {attempt + 2} of {tries}): {str(exc).splitlines()[0][:200]}", stacklevel=2)
            between()


@contextlib.contextmanager
def shot_on_failure(page, path: Path | None = None):
    """Whatever fails inside, the page as it was then is saved to `path` (by default
    test-artifacts/<the test's name>-failed.png), and its URL beside it (.url): a journey that ran
    out of time under a whole suite's load says what it waited for, not what the page showed."""
    try:
        yield
    except BaseException:
        if path is None:  # e.g. "tests/test_plugin.py::test_x (call)"
            test = os.environ.get("PYTEST_CURRENT_TEST", "journey").split("::")[-1].split(" ")[0]
            path = ARTIFACTS / f"{test}-failed.png"
        with contextlib.suppress(Exception):
            path.parent.mkdir(exist_ok=True)
            path.with_suffix(".url").write_text(page.url + "\n")
            page.screenshot(path=str(path))
        raise
