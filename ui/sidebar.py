"""The sidebar every page shares: what to look at (dataset, view, sample), then how to look (model,
weights, input size: ui/sidebar_look.py). app.py draws it on every run and leaves a `Selection` in
session_state for the pages.

Cost per run does not grow with the view: the view is FiftyOne stages (`camcore.store.views`), the
sample is a position in it, read with one server-side skip/limit per page of neighbours; counts
and distinct values are cached for a minute. Samples are keyed by id everywhere and shown by
their path relative to the dataset's common folder (repeated file names stay apart).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import streamlit as st

from camcore import demo_data, store
from camcore.errors import CamError
from camcore.progress import duration
from camcore.store import seek, views
from ui import cache, sidebar_look, text, urlstate
from ui.state import Sidebar

VIEW_ALL, VIEW_APP, VIEW_APP_SELECTED = "all", "app:view", "app:selected"
SAVED_PREFIX = "saved:"
POSITION, GOTO, JUMP = Sidebar.POSITION, Sidebar.GOTO, Sidebar.JUMP
PAGES_KEPT = 8  # pages of (id, path) kept per session


@dataclass(frozen=True)
class Selection:
    dataset: str
    view_spec: views.ViewSpec
    sample_id: str
    filepath: str
    label: str  # the path relative to the dataset's common folder
    position: int  # 0-based, in the view
    count: int  # samples in the view
    model: str
    weights: str  # "auto", "untrained" or a file in the weights folder
    input_size: int | None

    def view(self):
        """The FiftyOne view (stages, never a list of ids) the pages act on."""
        return views.build_view(store.load_dataset(self.dataset), self.view_spec)

    def neighbours(self, n: int) -> list[tuple[int, str, str]]:
        """(position, sample id, filepath) of up to n samples around the current one."""
        lo = max(0, min(self.position - n // 2, self.count - n))
        return [(lo + k, sid, path) for k, (sid, path) in
                enumerate(_page_rows(self.dataset, self.view_spec, lo, n))]


def current() -> Selection | None:
    return st.session_state.get(Sidebar.SELECTION)


def _load_quickstart() -> None:
    try:
        with st.spinner("Downloading the quickstart dataset…", show_time=True):
            dataset = demo_data.load_quickstart()
        st.session_state[Sidebar.DATASET] = dataset.name
    except CamError as exc:
        st.session_state[Sidebar.QUICKSTART_ERROR] = str(exc)


# ---------------------------------------------------------------- moving through the view (callbacks)


def choose_sample(sample_id: str, position: int | None = None) -> None:
    """Open a sample: at a known position (thumbnails), or found by id (search, links, the App)."""
    if position is None:
        st.session_state[JUMP] = sample_id
    else:
        _set_position(position)


def _set_position(position: int) -> None:
    st.session_state[POSITION] = int(position)
    st.session_state[GOTO] = int(position) + 1
    st.session_state.pop(JUMP, None)


def _step(delta: int, total: int) -> None:
    _set_position((st.session_state.get(POSITION, 0) + delta) % max(1, total))


def _goto(total: int) -> None:
    """A typed position; past the end (or before the start) is said in words and clamped (a bound
    on the widget only drew a red box whose reason was in a tooltip)."""
    wanted = int(st.session_state[GOTO])
    if not 1 <= wanted <= total:
        where = f"past the end of the view ({total:,} samples): showing the last" if wanted > total else \
            "before the start of the view: showing the first"
        urlstate.say(f"Position {wanted:,} is {where}.")
    _set_position(min(max(wanted, 1), total) - 1)


def _random(total: int) -> None:
    _set_position(views.random_position(total))


def _search_pick() -> None:
    picked = st.session_state.get(Sidebar.SEARCH_PICK)
    if picked:
        st.session_state[JUMP] = picked
        st.session_state[Sidebar.SEARCH_PICK] = None  # picking the same match again opens it again
        st.session_state.pop(Sidebar.SEARCH_FOUND, None)  # done with that search


def _search_submit(name: str, spec: views.ViewSpec) -> None:
    """The path search, once per query typed (never again on every click): one match opens at
    once, several are listed to pick from, none is said; the box is emptied either way."""
    query = str(st.session_state.get(Sidebar.SEARCH) or "").strip()
    st.session_state[Sidebar.SEARCH] = ""
    st.session_state.pop(Sidebar.SEARCH_FOUND, None)
    if not query:
        return
    try:
        found = views.search(views.build_view(store.load_dataset(name), spec), query)
    except CamError as exc:  # a callback's exception would be a traceback on the page
        urlstate.say(f"Could not search the file paths: {exc}")
        return
    if len(found) == 1:
        st.session_state[JUMP] = found[0][0]
    else:
        st.session_state[Sidebar.SEARCH_FOUND] = (query, found)


# ---------------------------------------------------------------- reading pages of the view


def _page_rows(dataset: str, spec: views.ViewSpec, start: int, n: int) -> list[tuple[str, str]]:
    """(id, path) at positions start..start+n-1, from whole pages kept in the session."""
    kept: OrderedDict = st.session_state.setdefault(Sidebar.PAGES, OrderedDict())
    size = views.PAGE_SIZE
    rows: list[tuple[str, str]] = []
    first, last = start // size, (start + n - 1) // size
    for p in range(first, last + 1):
        key = (dataset, spec, p)
        if key not in kept:
            view = views.build_view(store.load_dataset(dataset), spec)
            indexes = views.index_names(view)
            if st.session_state.get(Sidebar.PAGES_INDEXES) != indexes:
                # an index (anyone's) can change the order MongoDB returns an unsorted filter in,
                # with the count unchanged: no seek from the edge of a page read before it
                kept.clear()
                st.session_state[Sidebar.PAGES_INDEXES] = indexes
            # ▶ or ◀ onto a new page seeks from the edge of the page beside it, when kept
            prev, nxt = kept.get((dataset, spec, p - 1)), kept.get((dataset, spec, p + 1))
            kept[key] = seek.page_at(view, spec, p * size, size,
                                     after=prev[-1][0] if prev and len(prev) == size else None,
                                     before=nxt[0][0] if nxt else None)
            while len(kept) > PAGES_KEPT:
                kept.popitem(last=False)
        kept.move_to_end(key)
        rows += kept[key]
    offset = start - first * size
    return rows[offset:offset + n]


def _forget_pages() -> None:
    st.session_state.pop(Sidebar.PAGES, None)


NO_MATCH = "No samples in this view: clear or change the filter under 'Filter and sort', or pick another view."
EMPTY_DATASET = "This dataset has no samples: add images or pick another dataset."
PROBLEM = Sidebar.PROBLEM


def problem() -> str | None:
    """Why `current()` is None: the sidebar's message (empty view or dataset, a failing dataset)."""
    return st.session_state.get(PROBLEM)


def _no_selection(message: str) -> None:
    """Nothing to act on: drop the stored selection, so no page acts on the previous sample."""
    st.session_state.pop(Sidebar.SELECTION, None)
    st.session_state[PROBLEM] = message


def draw() -> Selection | None:
    """Draw the shared controls; return (and store) the selection, or None with a message (and
    no stored selection: pages never act on a sample that is no longer in the view)."""
    sb = st.sidebar
    sb.markdown("### What to look at")
    try:
        with st.spinner("Preparing the demo dataset…", show_time=True):
            demo = cache.demo_dataset_name()
        names = store.list_datasets()
    except CamError as exc:
        sb.error(f"FiftyOne is not available: {text.escape(exc)}")
        _no_selection(f"FiftyOne is not available: {exc}")
        return None
    names = [demo] + [n for n in names if n != demo]
    urlstate.read_once(names)
    if st.session_state.get(Sidebar.DATASET) not in names:
        st.session_state[Sidebar.DATASET] = demo
    name = sb.selectbox("Dataset", names, key=Sidebar.DATASET, help="Any FiftyOne image dataset in your database.")
    nav_box = sb.container()  # the sample, right under the dataset: drawn once the view is known
    # Shown only past half a second (Streamlit's spinner delay): a big view's count, a sort's or a
    # filter's first read say what they are doing, not Streamlit's generic running indicator.
    with st.spinner(f"Reading the view of {text.escape(name)}: counting its samples and finding the one to show…",
                    show_time=True):
        found, trouble = _where(sb, nav_box, name)
    urlstate.show_messages(nav_box)
    if demo_data.QUICKSTART_NAME not in names:
        sb.button("Load FiftyOne's quickstart (needs internet)", key=Sidebar.LOAD_QUICKSTART, on_click=_load_quickstart,
                  help="Downloads the FiftyOne zoo 'quickstart' dataset (200 images with ground truth boxes).")
    if st.session_state.get(Sidebar.QUICKSTART_ERROR):
        sb.error(text.escape(st.session_state.pop(Sidebar.QUICKSTART_ERROR)))
    model_key, weights_value, input_size = sidebar_look.draw(sb)  # stays drawn, whatever the dataset holds
    if trouble is not None:
        nav_box.warning(trouble)
        _no_selection(trouble)
        return None
    spec, position, total, sample_id, path, label = found
    st.session_state.pop(PROBLEM, None)
    sel = Selection(name, spec, sample_id, path, label, position, total, model_key, weights_value, input_size)
    st.session_state[Sidebar.SELECTION] = sel
    return sel


def _where(sb, nav_box, name: str):
    """The view (its widgets in `sb`) and the current sample in it (its navigator in `nav_box`), or
    (None, a message saying why there is none)."""
    try:
        dataset = store.load_dataset(name)
        if views.count(dataset) == 0:  # before require_image: an empty dataset has no media type yet
            return None, EMPTY_DATASET
        store.require_image(dataset)
        spec = _view_spec(sb, dataset)
        total = cache.view_count(name, spec)
        if total == 0:
            return None, NO_MATCH
        view_key = (name, spec)
        if st.session_state.get(Sidebar.VIEW_KEY) != view_key:
            _enter_view(view_key)
        if st.session_state.get(Sidebar.PAGES_COUNT) != total:
            # samples came or went: pages read before hold other positions now, and ▶ must not seek
            # from their edge (seek.page_at) as if they did
            _forget_pages()
            st.session_state[Sidebar.PAGES_COUNT] = total
        position = _resolve_jump(sb, dataset, spec)
        position = min(max(0, st.session_state.get(POSITION, 0) if position is None else position), total - 1)
        _set_position(position)
        rows = _page_rows(name, spec, position, 1)
        if not rows:  # the view shrank since it was counted: count again, start over
            cache.view_count.clear()
            _forget_pages()
            total, position = cache.view_count(name, spec), 0
            _set_position(0)
            rows = _page_rows(name, spec, 0, 1) if total else []
            if not rows:
                return None, NO_MATCH
        sample_id, path = rows[0]
        label = views.relative_label(path, cache.common_folder(name))
        _navigator(nav_box, name, spec, total, label)
    except CamError as exc:
        return None, f"{text.escape(exc)}. Pick another dataset or view."
    return (spec, position, total, sample_id, path, label), None


def _enter_view(view_key) -> None:
    """Another dataset, view, filter or sort: start at its first sample (a new order is read
    from its top), unless a jump is pending (a link's or a search's sample)."""
    st.session_state[Sidebar.VIEW_KEY] = view_key
    _forget_pages()
    st.session_state.pop(Sidebar.SEARCH_FOUND, None)  # a search's matches were of the old view
    if JUMP not in st.session_state:
        _set_position(0)


def view_caption(sel: Selection) -> str:
    """One line for the top of every page: where the sample is, in what view and order, and its
    value of the sort field (plain text: names come from data)."""
    spec = sel.view_spec
    line = f"Sample {sel.position + 1:,} of {sel.count:,} · {spec.describe()}"
    if spec.sort_field:
        try:
            value = views.field_value(store.load_dataset(sel.dataset), sel.sample_id, spec.sort_field)
        except CamError:
            value = None
        line += f" · {spec.sort_field} = {_short(value)}"
    return line


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "(none)" if value is None else str(value)[:80]


def _resolve_jump(sb, dataset, spec: views.ViewSpec) -> int | None:
    """A pending jump to a sample id (a link, a search result, the App): its position, or None
    after saying that it is not in this view."""
    sample_id = st.session_state.pop(JUMP, None)
    quiet = st.session_state.pop(Sidebar.JUMP_QUIET, False)
    if not sample_id:
        return None
    position = views.position_of(views.build_view(dataset, spec), spec, sample_id)
    if position is None and not quiet:
        urlstate.say(f"Sample {sample_id!r} is not in this view; showing the view's first sample.")
    return 0 if position is None else position


def _navigator(sb, name: str, spec: views.ViewSpec, total: int, label: str) -> None:
    """◀ position / N ▶, a position to jump to, a random sample, a search on the file path."""
    sb.text(label)  # the sample's path relative to the dataset's folder: text, never markup
    prev_col, pos_col, next_col = sb.columns([1, 2, 1], vertical_alignment="center")
    prev_col.button("◀", key=Sidebar.PREV, on_click=_step, args=(-1, total), help="Previous sample")
    pos_col.number_input("Position", step=1, key=GOTO, on_change=_goto, args=(total,), label_visibility="collapsed",
                         help=f"Position in the view (1 to {total:,}); type one to jump there.")
    next_col.button("▶", key=Sidebar.NEXT, on_click=_step, args=(1, total), help="Next sample")
    r1, r2 = sb.columns([2, 3], vertical_alignment="center")
    r1.caption(f"of {total:,}")
    r2.button("Random sample", key=Sidebar.RANDOM, on_click=_random, args=(total,), width="stretch")
    sb.text_input("Find by file path", key=Sidebar.SEARCH, placeholder="part of a path, e.g. val/frame_01",
                  on_change=_search_submit, args=(name, spec),
                  help=f"Searched on the server when you press Enter: one match opens at once; the first "
                       f"{views.SEARCH_LIMIT} matches are listed.")
    last = st.session_state.get(Sidebar.SEARCH_FOUND)
    if last is not None:
        query, found = last
        if not found:
            sb.caption(f"No file path in this view contains {text.escape(repr(query))}.")
        else:
            folder = cache.common_folder(name)
            labels = {sid: views.relative_label(path, folder) for sid, path in found}
            # a widget label is markdown: the typed text is escaped
            sb.selectbox(f"Matches for {text.escape(repr(query))} "
                         f"({len(found)}{'+' if len(found) == views.SEARCH_LIMIT else ''})",
                         list(labels), index=None, key=Sidebar.SEARCH_PICK, format_func=labels.get,
                         placeholder="open a match", on_change=_search_pick)


# ---------------------------------------------------------------- the view: saved, the App's, filters, sort


def _view_choices(dataset) -> dict[str, str]:
    choices = {VIEW_ALL: "All samples"}
    for saved in dataset.list_saved_views():
        choices[SAVED_PREFIX + saved] = f"Saved view: {saved}"
    session = store.app_session()
    if session is not None and session.dataset is not None and session.dataset.name == dataset.name:
        choices[VIEW_APP] = "The FiftyOne App's current view"
        choices[VIEW_APP_SELECTED] = f"Selected in the FiftyOne App ({len(session.selected or [])})"
    return choices


def _view_spec(sb, dataset) -> views.ViewSpec:
    choices = _view_choices(dataset)
    urlstate.check_view(choices)
    if st.session_state.get(Sidebar.VIEW) not in choices:
        st.session_state[Sidebar.VIEW] = VIEW_ALL
    choice = sb.selectbox("View", list(choices), key=Sidebar.VIEW, format_func=choices.get,
                          help="The dataset's saved views, and the FiftyOne App's view and selection when the App "
                               "was launched from here.")
    base: dict = {}
    if choice.startswith(SAVED_PREFIX):
        base["saved_view"] = choice[len(SAVED_PREFIX):]
    elif choice in (VIEW_APP, VIEW_APP_SELECTED):
        session = store.app_session()
        if choice == VIEW_APP:
            base["app_stages"] = views.app_view_spec(session.view)
        else:
            selected = tuple(session.selected or ())
            if not selected:
                sb.caption("Nothing is selected in the App: showing all samples.")
            base["selected"] = selected
    with sb.expander("Filter and sort", expanded=False):
        # a link's Filter and sort (urlstate.apply_filter) go in just before each widget is drawn
        tags = cache.distinct_tags(dataset.name)
        urlstate.apply_filter("tags", tags)
        chosen_tags = st.multiselect("Samples tagged", tags, key=Sidebar.VIEW_TAGS)
        urlstate.apply_filter("file")
        contains = st.text_input("File name contains", key=Sidebar.VIEW_FILENAME)
        fields = store.label_fields(dataset)
        urlstate.apply_filter("field", fields)
        field = st.selectbox("Label field", [None] + fields, key=Sidebar.VIEW_LABEL_FIELD,
                             format_func=lambda f: "(any)" if f is None else f)
        label, confidence = None, None
        if field:
            values = cache.label_values(dataset.name, field)
            urlstate.apply_filter("label", values)
            label = st.selectbox("Class", [None] + values, key=Sidebar.VIEW_LABEL,
                                 format_func=lambda v: "(any)" if v is None else v)
            if views.has_confidence(dataset, field):
                urlstate.apply_filter("conf")
                lo, hi = st.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.05, key=Sidebar.VIEW_CONFIDENCE)
                confidence = None if (lo, hi) == (0.0, 1.0) else (lo, hi)
        sortable = views.sortable_fields(dataset)
        urlstate.apply_filter("sort", sortable)
        urlstate.apply_filter("desc")
        sort_field = st.selectbox("Sort by", [None] + sortable, key=Sidebar.VIEW_SORT,
                                  format_func=lambda f: "(the view's own order)" if f is None else f,
                                  help="Any scalar field: a Brain uniqueness or mistakenness, a prediction's "
                                       "confidence, a date…")
        reverse = st.toggle("Descending", key=Sidebar.VIEW_SORT_DESC, disabled=sort_field is None)
        urlstate.filter_leftovers()
        if sort_field:
            _offer_sort_index(dataset, sort_field, tags=bool(chosen_tags))
    narrow = _narrowing(sb, dataset)
    return views.ViewSpec(tags=tuple(chosen_tags), label_field=field or "", label=label or "",
                          confidence=confidence, filename_contains=contains.strip(),
                          sort_field=sort_field or "", sort_reverse=bool(reverse and sort_field), narrow=narrow,
                          **base)


def _offer_sort_index(dataset, field: str, tags: bool = False) -> None:
    """On a big dataset, a sort without an index scans every sample at each move (23 s a ▶ at
    10^6): say so, what an index costs, and build it on the user's click. After a tag filter the
    index that serves is on (tags, field)."""
    total = views.count(dataset)
    if total < views.SORT_INDEX_OFFER_OVER or not views.sort_index_missing(dataset, field, tags):
        return
    seconds, megabytes = views.sort_index_cost(total)
    what = f"tags and {field}" if tags else field
    st.caption(f"Each move in this order reads all {total:,} samples: an index on {text.escape(what)} makes it a "
               f"seek. Built once in the database, for everyone: about {duration(seconds)} and "
               f"{megabytes:,.0f} MB.")
    if st.session_state.pop(Sidebar.SORT_INDEX_GO, None) == (field, tags):  # the click of the run before
        with st.spinner(f"Building the index on {what} (about {duration(seconds)})…", show_time=True):
            views.create_sort_index(dataset, field, tags)
        st.rerun()
    st.button(f"Index {what}", key=Sidebar.SORT_INDEX, icon=":material/bolt:", on_click=_ask_index,
              args=(field, tags))


def _ask_index(field: str, tags: bool) -> None:
    st.session_state[Sidebar.SORT_INDEX_GO] = (field, tags)


def _clear_narrowing() -> None:
    st.session_state[Sidebar.NARROW] = ""


def _narrowing(sb, dataset) -> str:
    """The Audit page's narrowing of the view (a click on a chart), shown with a way to drop it.
    One this dataset cannot apply (a link's, a measure field deleted or renamed since, another
    dataset's) is dropped with one line: the whole view stays usable."""
    narrow = str(st.session_state.get(Sidebar.NARROW) or "")
    if narrow:
        from camcore.store import audit

        try:
            audit.narrow_filter(narrow, dataset)
        except CamError as exc:
            st.session_state[Sidebar.NARROW] = ""
            sb.warning(text.escape(f"Dropped the Audit page's narrowing: {exc}. Showing the whole view."))
            return ""
        row = sb.columns([4, 1])
        row[0].caption("Narrowed by the Audit page: " + text.escape(audit.describe_narrow(narrow)))
        row[1].button("✕", key=Sidebar.NARROW_CLEAR, on_click=_clear_narrowing, help="Show the whole view again")
    return narrow
