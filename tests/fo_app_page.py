"""A Chromium page on the real FiftyOne App as a returning user sees it.

FiftyOne 1.22's App opens an "Explore Enterprise" popover on a browser's first visit (until its
Dismiss sets a localStorage key). The popover's invisible backdrop takes every click on the page:
a tile or checkbox click waits behind it, and under load the tests' waits ran out (seen in whole
runs: "MuiPopover ... intercepts pointer events", the modal never opened). A user dismisses it once;
the tests start each browser as a user who has.
"""
from __future__ import annotations

import re
from collections import Counter

# the App's own key (fiftyone/server/static/assets/index.module-*.js: `fiftyone-enterprise-tooltip-seen`)
PROMO_SEEN_KEY = "fiftyone-enterprise-tooltip-seen"
PROMO_TITLE = "Accelerate your workflow"  # the popover's heading
_PROMO_SEEN = f"try {{ window.localStorage.setItem({PROMO_SEEN_KEY!r}, 'true'); }} catch (e) {{}}"


def as_returning_user(target) -> None:
    """Mark the App's promo as seen in a Playwright page or context, before its first goto."""
    target.add_init_script(_PROMO_SEEN)


def overlapping_redraws(page) -> list[str]:
    """What a page (or a browser context's pages) logs, from now on, when FiftyOne 1.22's looker
    posts a copy of a tile's sample whose maps it no longer holds ("DataCloneError: ... An ImageBitmap
    is detached"): that load is dropped and the tile keeps no map (issue 21). Three causes, all
    mended by the plugin (dist/index.umd.js, keepLoadsOnTheirOwnCopy): a redraw asked while a load
    was out posted the copy that load handed over (after compute_cams' ops and sync_app's after a
    push, under load), a load came while the App's label painting had the maps of the looker's own
    copy, and a looker the grid destroyed posted its closed maps. Every App journey judges it
    (no_overlapping_redraws); redraw_race makes all three happen on demand."""
    seen: list[str] = []  # ... and the plugin's notes on the redraws it kept or dropped, to say what came before
    page.on("console", lambda m: seen.append(m.text[:300]) if "DataCloneError" in m.text or _NOTE in m.text else None)
    return seen


_NOTE = "@cam-explorer/cam: a "  # the plugin's redraw notes: "a tile's redraw waits ...", "a destroyed tile's ..."


def no_overlapping_redraws(seen: list[str]) -> None:
    errors = [text for text in seen if "DataCloneError" in text]
    notes = Counter(re.sub(r" \(sample .*", "", text) for text in seen if text.startswith(_NOTE))
    assert not errors, (f"the App's looker posted a sample copy without its maps (its tile may keep none): "
                        f"{errors[:3]}; the plugin's redraw notes: {dict(notes)}")


# Records each looker the App makes (at its first load) for redraw_race. The App sets its looker
# module (@fiftyone/looker) on window.__fol__ once, as its bundle loads, before any looker exists.
_RECORD_LOOKERS = """
(() => {
  let fol;
  Object.defineProperty(window, "__fol__", { configurable: true, get: () => fol, set: (value) => {
    fol = value;
    const proto = value && value.AbstractLooker && value.AbstractLooker.prototype;
    if (!proto || typeof proto.loadSample !== "function") return;
    const load = proto.loadSample;
    window.__camLookers = new Set();
    proto.loadSample = function () { window.__camLookers.add(this); return load.apply(this, arguments); };
  } });
})();
"""

# On one looker that draws a map: (1) a load that hands its copy's bitmaps to a worker (what an
# options change starts) and its answer; (2) a redraw asked with the copy that load handed over
# (what a second change asked while it was out leaves in the looker's 100-ms wait), which must load
# again; (3) the App's label painting of the looker's own copy (what it runs on new fields and
# colours) and a load while it is out, which must load once it is done; (4) a redraw asked, then
# the looker destroyed before that wait ends (the grid replacing it after reload_dataset).
# FiftyOne 1.22 alone logs a DataCloneError at (2), (3) and (4) and drops (2) and (3).
_REDRAW_RACE = """
async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const bitmaps = (value, depth = 0, out = []) => {
    if (!value || typeof value !== "object" || depth > 8) return out;
    if (value instanceof ImageBitmap) { if (value.width) out.push(value); return out; }
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return out;
    for (const key of Object.keys(value)) bitmaps(value[key], depth + 1, out);
    return out;
  };
  const lookers = [...(window.__camLookers || [])].filter(
    (l) => l.sample && !l.state.destroyed && bitmaps(l.sample).length);
  if (!lookers.length) return { lookers: 0 };
  const looker = lookers[lookers.length - 1];
  const handed = looker.sample;
  looker.isSampleUpdating = true;  // as its own wait does before it loads
  looker.loadSample(handed, bitmaps(handed));
  for (let i = 0; i < 200 && looker.sample === handed; i++) await sleep(50);
  const answered = looker.sample;
  looker.updateSample(handed);
  for (let i = 0; i < 200 && looker.sample === answered; i++) await sleep(50);
  const redrawn = looker.sample !== answered;
  // (3) the App's label painting takes the maps of the looker's own copy, and a load comes meanwhile
  const fields = (looker.getSampleOverlays() || []).filter((o) => o.field && o.label && o.label.map).map((o) => o.field);
  const unpainted = looker.sample;
  looker.refreshSample(fields);  // its painting workers are idle: it posts now
  looker.isSampleUpdating = true;
  try {
    looker.loadSample(unpainted, []);
  } catch (error) {  // as the looker's own wait catches and logs it
    looker.isSampleUpdating = false;
    console.error(error);
  }
  for (let i = 0; i < 200 && looker.sample === unpainted; i++) await sleep(50);
  const painted = looker.sample;
  for (let i = 0; i < 200 && looker.sample === painted; i++) await sleep(50);
  const loadedAfterPainting = looker.sample !== painted;
  looker.updateSample(looker.sample);
  looker.destroy();
  await sleep(600);
  return { lookers: lookers.length, answered: answered !== handed, redrawn, painted: fields.length > 0 && painted !== unpainted,
           loadedAfterPainting };
}
"""


def record_lookers(page) -> None:
    """Before a page's first goto: keep the App's lookers for redraw_race."""
    page.add_init_script(_RECORD_LOOKERS)


def redraw_race(page) -> dict:
    """Run _REDRAW_RACE on the page's newest looker that draws a map (record_lookers first); the
    last step destroys it: run it at the end of a journey."""
    return page.evaluate(_REDRAW_RACE)


def open_operator_form(page, search: str, item: str, timeout_ms: int = 120_000) -> None:
    """Open an operator's form as a user does: focus the page, the operator browser's shortcut
    (Backquote), type `search`, click the operator listed as `item`."""
    from playwright.sync_api import expect

    page.locator("body").click(position={"x": 640, "y": 20})  # the page, not an input
    page.keyboard.press("Backquote")
    operators = page.locator("[data-cy=operators-browser]")
    expect(operators).to_be_visible(timeout=timeout_ms)
    page.keyboard.type(search)
    operators.get_by_text(item).click()
