"""Every session_state key the app uses, namespaced per page (and for what the pages share).

The strings are part of the app's contract: tests read them (AppTest's session_state, widget
keys) and the page's CSS selects containers by them (`.st-key-<key>`). Keys that depend on a
model or an option are functions. Keys starting with "_" are bookkeeping, never widgets.
"""
from __future__ import annotations


class Router:
    """ui/router.py: the one hop of a deep link through app.py."""

    ROUTED = "_routed_run"
    DEEP_LINK = "_deep_link"


class Url:
    """ui/urlstate.py: the link a session starts from, and what the page put on screen."""

    READ = "_url_read"
    PENDING = "_url_pending"  # the LinkState of the first run, for the pages to apply
    MESSAGES = "_url_messages"
    PAGE_STATE = "_url_page_state"  # what the page put on screen: layers, methods, target
    VIEW_WANTED = "_url_view_wanted"
    FILTER_WANTED = "_url_filter_wanted"  # a link's Filter and sort, applied as the sidebar draws them
    WEIGHTS_DONE = "_url_weights_done"
    PAGE_DONE = "_url_page_done"
    BOX_DONE = "_url_box_done"  # a link's box rule was applied


class Sidebar:
    """ui/sidebar.py: what to look at (dataset, view, sample); ui/sidebar_look.py: how (model, weights)."""

    SELECTION = "selection"  # the Selection every page acts on
    PROBLEM = "selection_problem"  # why there is no selection (a message)
    DATASET = "dataset"
    VIEW = "view_choice"
    VIEW_TAGS = "view_tags"
    VIEW_FILENAME = "view_filename"
    VIEW_LABEL_FIELD = "view_label_field"
    VIEW_LABEL = "view_label"
    VIEW_CONFIDENCE = "view_confidence"
    VIEW_SORT = "view_sort"
    VIEW_SORT_DESC = "view_sort_desc"
    POSITION = "nav_position"
    GOTO = "nav_goto"
    JUMP = "_nav_jump_to"
    JUMP_QUIET = "_nav_jump_quiet"  # not finding the jump's sample in a new view is no news
    SEARCH = "nav_search"
    SEARCH_PICK = "nav_search_pick"
    SEARCH_FOUND = "_nav_search_found"  # (query, [(id, path)]) of the last search, until a pick or a new view
    PAGES = "_nav_pages"  # pages of (id, path) read from the view
    PAGES_COUNT = "_nav_pages_count"  # the view's count when those pages were read
    PAGES_INDEXES = "_nav_pages_indexes"  # the sample collection's index names when they were read
    VIEW_KEY = "_nav_view"  # (dataset, view spec) the position belongs to
    QUICKSTART_ERROR = "quickstart_error"
    MODEL = "model"
    WEIGHTS = "weights_choice"
    WEIGHTS_BY_MODEL = "_weights_by_model"
    INPUT_SIZE = "input_size"
    PREV = "prev_sample"
    NEXT = "next_sample"
    RANDOM = "random_sample"
    LOAD_QUICKSTART = "load_quickstart"
    RELOAD_MODELS = "reload_models"
    NARROW = "view_narrow"  # the Audit page's narrowing (camcore.store.audit), in the URL as narrow=
    NARROW_CLEAR = "view_narrow_clear"
    SORT_INDEX = "view_sort_index"  # "Index <field>": the sort's index, built on a click
    SORT_INDEX_GO = "_view_sort_index_go"

    @staticmethod
    def model_of(widget_key: str) -> str:
        """The model a per-model widget's value was restored for."""
        return f"_{widget_key}_model"


class Widgets:
    """ui/widgets.py: the copies that let a widget's value outlive a run that did not draw it."""

    @staticmethod
    def kept(key: str) -> str:
        return f"_kept_{key}"

    @staticmethod
    def offered(key: str) -> str:
        return f"_offered_{key}"

    @staticmethod
    def shown_label(key: str) -> str:
        return f"_shown_label_{key}"

    @staticmethod
    def pending(key: str) -> str:
        """A value set for a toggle by a callback, to win over the browser's (shown_toggle)."""
        return f"_set_{key}"


class Compute:
    """ui/compute.py: this session's slow computation (its explainers are in ui/session_memory.py)."""

    MEMORY_TOKEN = "_session_memory"  # which holder of ui/session_memory.py is this session's
    CANCEL_REQUESTED = "compute_cancel_requested"
    CANCEL_BUTTON = "compute_cancel"
    NOTES = "_compute_notes"  # what a slow run said before the page reran to show its maps
    WAIT_CANCELLED = "wait_cancel_requested"
    WAIT_BOX = "cam_wait"
    WAIT_CANCEL_BUTTON = "wait_cancel"
    WAIT_AGAIN = "wait_again"
    BUSY = "cam_busy"  # container of the progress (CSS hides it once the script stopped)
    STOPPED = "cam_stopped"  # container of the note shown when Stop ended the script
    GO_ALL = "go_all"

    @staticmethod
    def go(method: str, layer: str) -> str:
        return f"go_{method}_{layer}"


class Explore:
    """pages/explore.py and what it draws (ui/explore_view.py, ui/save_panel.py)."""

    METHODS = "methods"
    WALK_METHOD = "walk_method"
    ALPHA = "alpha"
    COLORMAP = "colormap"
    SHOW_RAW = "show_raw"
    EIGEN = "eigen_smooth"
    AUG = "aug_smooth"
    MAIN = "cam_main"  # the main map's container (CSS caps its height)
    PUSH = "push"
    PUSH_REQUESTED = "push_requested"
    PUSHED = "pushed"  # what the last push wrote, with the context it is about
    FINDING_REQUESTED = "finding_requested"
    FINDING_REF = "finding_ref"
    BOX = "box"  # a detector's box: the picker's choice (a short box rule)
    BOX_THRESHOLD = "box_threshold"
    BOX_RENORM = "box_renormalise"  # the map renormalised inside the explained boxes

    @staticmethod
    def layers(model: str) -> str:
        return f"layers_{model}"

    @staticmethod
    def walk_layer(model: str) -> str:
        return f"walk_layer_{model}"

    @staticmethod
    def target(class_count: int) -> str:
        return f"target_{class_count}"

    @staticmethod
    def thumb(sample_id: str) -> str:
        return f"thumb_{sample_id}"


class App:
    """The FiftyOne App, which Explore and Findings both launch (one per process)."""

    PORT = "fo_port"  # Explore's port field
    LAUNCH = "launch_fo"
    LAUNCHED = "fo_launched"  # the port where Explore launched the App on the whole dataset
    FINDINGS_LAUNCHED = "fo_launched_findings"  # the port where Findings pointed the App at its view


class Compare:
    """pages/compare.py and its renderers ui/compare_studies.py, compare_grid.py, compare_road.py,
    compare_ranking.py."""

    METHODS = "cmp_methods"
    EIGEN = "cmp_eigen"
    AUG = "cmp_aug"
    TARGET = "cmp_target"
    BOX = "cmp_box"  # a detector's box (ui/boxes.py)
    BOX_THRESHOLD = "cmp_box_threshold"
    BOX_RENORM = "cmp_box_renormalise"  # the maps renormalised inside the explained boxes
    TARGET_REQUEST = "cmp_target_request"  # a class asked for by a study or a link, for the picker
    ALPHA = "cmp_alpha"
    CMAP = "cmp_cmap"
    SCORES = "cmp_scores"
    SCORES_GO = "cmp_scores_go"  # the user asked for the scores too slow to compute unasked
    SCORES_GO_BUTTON = "cmp_scores_go_button"
    THRESHOLD = "cmp_threshold"
    STUDY_NOTE = "cmp_study_note"  # what the last study did about the sample (shown once)
    STUDY_GO = "cmp_study_go"  # (study, when clicked): the click is the go for its slow maps too
    ENLARGE = "cmp_enlarge"  # the (method, layer) to show full size
    USE_UNTRAINED = "use_untrained"
    ROAD_OPEN = "road_open"  # the ROAD expander's open state
    ROAD_CHOICE = "road_choice"
    ROAD_GO = "road_go"
    ROAD_REQUESTED = "road_requested"
    ROAD_CURVE = "road_curve"
    RANK_REQUESTED = "rank_requested"
    RANK_GO = "rank_go"
    RANK_METHOD = "rank_method"
    RANK_LAYER = "rank_layer"
    RANK_LIMIT = "rank_limit"
    RANK_PAGE = "rank_page"
    RANK_ROWS = "rank_rows"
    RANK_RUNNING = "cmp_rank_running"  # a ranking started and not finished (a click stops it)

    @staticmethod
    def layers(model: str) -> str:
        return f"cmp_layers_{model}"

    @staticmethod
    def study(key: str) -> str:
        return f"study_{key}"

    @staticmethod
    def row(label: str) -> str:
        return f"cmp_row_{label}"

    @staticmethod
    def enlarge(method: str, layer: str) -> str:
        return f"enlarge_{method}_{layer}"

    @staticmethod
    def rank_class(model: str) -> str:
        return f"rank_class_{model}"

    @staticmethod
    def rank_class_default(model: str) -> str:
        return f"_default_rank_class_{model}"

    @staticmethod
    def rank_object(model: str) -> str:
        return f"rank_object_{model}"

    @staticmethod
    def rank_object_label(field: str) -> str:
        return f"rank_object_label_{field}"

    @staticmethod
    def rank_object_label_class(field: str) -> str:
        """The class the object label's default was chosen for."""
        return f"_class_for_rank_object_label_{field}"


class Audit:
    """pages/audit.py, pages/review.py, pages/runs.py (ui/audit.py)."""

    RUN = "audit_run"  # the heatmap field audited (URL run=)
    APPLIED = "_audit_applied"  # + "_<chart>": the selection a chart had on its last run
    HIST = "audit_hist"
    CLASSES = "audit_classes"
    SCATTER = "audit_scatter"
    SAVE_NAME = "audit_save_name"
    SAVE = "audit_save"
    OPEN_APP = "audit_open_app"
    REVIEWED = "review_position"  # 0-based position in the queue (URL reviewed=, 1-based)
    REVIEWED_QUEUE = "_review_queue"  # the queue that position is in: (dataset, view, run)
    NEXT = "review_next"
    PREV = "review_prev"
    TAG = "review_tag"
    NOTE = "review_note"
    NOTE_SAMPLE = "_review_note_sample"  # the sample the note box was last shown for
    RECORD = "review_record"
    COMPUTE = "review_compute"
    COMPUTE_REQUESTED = "_review_compute_requested"
    RUN_A = "runs_a"
    RUN_B = "runs_b"
    RUNS_BY = "runs_by"  # classes as run A or run B explained them
    RUNS_CLASSES = "runs_classes"
    RUNS_PAGE = "runs_page"


class Batch:
    """pages/batch.py and ui/batch_runs.py."""

    START = "batch_start_requested"
    CANCEL = "batch_cancel_requested"
    LAST = "batch_last_report"  # what the last (or interrupted) run reported, for the next rerun
    TOKEN = "batch_session_token"  # this session's mark on the runs it starts (a reload is a new session)
    METHODS = "batch_methods"
    RULE = "batch_rule"
    BOXES = "batch_boxes"  # a detector's box rule
    BOX_FACTS = "batch_box_facts"  # (dataset, view) and what its box rules found there (batch.BoxFacts)
    EIGEN = "batch_eigen_smooth"
    MEASURES = "batch_measures"
    OBJECT_FIELD = "batch_object_field"
    THRESHOLD = "batch_threshold"
    FAITHFULNESS = "batch_faithfulness"
    ANY_OBJECT = "batch_any_object"
    START_BUTTON = "batch_start"
    CANCEL_BUTTON = "batch_cancel"

    @staticmethod
    def layers(model: str) -> str:
        return f"batch_layers_{model}"

    @staticmethod
    def target_class(model: str) -> str:
        return f"batch_class_{model}"


class Findings:
    """pages/findings.py."""

    FILTER = "findings_filter"
    SEEN = "findings_seen"  # the finding labels the filter has offered: a new one starts chosen
    PAGE = "findings_page"
    PORT = "findings_port"
    LAUNCH = "findings_app"
