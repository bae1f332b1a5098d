"""Queued CAM runs: a dataset's delegated compute_cams runs (FiftyOne's delegated operations, run by
a `fiftyone delegated launch` worker), and what an open App page should be told about them.

Open-source FiftyOne (1.22) shows nothing once a run is scheduled (no runs list in the App, and a
scheduled generator's form closes without output): the plugin's page check (sync_app, every few
seconds) reads the dataset's latest runs here and tells the page of each one's state as it changes
(queued, running with its progress, completed, failed with the reason)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from camcore.store.datasets import db_errors

RECENT = 5  # the latest runs of a dataset a page is told about (one small, sorted, limited query)
_PROGRESS_STEPS = 4  # a running run is told again at each quarter of its progress


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """One delegated run, as a page is told about it."""

    id: str
    state: str  # FiftyOne's run state: scheduled, queued, running, processing, completed, failed
    label: str  # the run's name (compute_cams' resolve_run_name: model, methods, layers)
    progress: float | None = None  # 0..1 while running
    detail: str = ""  # the run's progress label, or its error's first line

    @property
    def stage(self) -> str:
        """What a page has been told of this run: its state, and a running run's quarter."""
        if self.state in ("running", "processing"):  # no progress yet: its first quarter, told once
            quarter = int((self.progress or 0.0) * _PROGRESS_STEPS)
            return f"running:{min(quarter, _PROGRESS_STEPS - 1)}"
        return self.state


@db_errors
def cam_runs(dataset_name: str, operator_uri: str, most: int = RECENT) -> list[RunStatus]:
    """The dataset's `most` latest runs of `operator_uri` (newest first): one query on FiftyOne's
    delegated operations, sorted and limited, whatever the dataset's size."""
    from fiftyone.factory import DelegatedOperationPagingParams, SortByField, SortDirection

    paging = DelegatedOperationPagingParams(sort_by=SortByField.QUEUED_AT, sort_direction=SortDirection.DESCENDING,
                                            limit=most)
    docs = _service().list_operations(operator=operator_uri, dataset_name=dataset_name, paging=paging)
    return [_status(doc) for doc in docs]


@functools.cache
def _service() -> Any:
    """FiftyOne's delegated-operations service, made once: making one lists (and may create) the
    collection's indexes, and a page asks every two seconds."""
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def _status(doc) -> RunStatus:
    status, result = doc.status, doc.result
    error = str(result.error or "").strip().splitlines() if result is not None else []
    detail = error[-1] if error else str(getattr(status, "label", None) or "")
    progress = getattr(status, "progress", None)
    return RunStatus(id=str(doc.id), state=str(doc.run_state), label=str(doc.label or doc.operator),
                     progress=float(progress) if progress is not None else None, detail=detail[:300])


def run_notices(told: dict[str, str] | None, runs: list[RunStatus]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(the notices a page should show now, each (text, variant), and what it has then been told).

    `told`: run id -> stage, what this page was told before; None on its first check, when only
    runs still going are told (a page opened later is not shown old endings, nor later). A run is
    told when it is new to the page or its stage changed: queued, each quarter of its progress,
    its end."""
    notices: list[tuple[str, str]] = []
    after: dict[str, str] = {}
    for run in runs:
        after[run.id] = run.stage
        if told is None and run.state in ("completed", "failed"):
            continue  # ended before this page watched it
        if (told or {}).get(run.id) != run.stage:
            notices.append(_notice(run, new=run.id not in (told or {})))
    return notices, after


def newly_completed(told: dict[str, str] | None, now: dict[str, str]) -> bool:
    """Whether a run the page was watching (`told`, None on its first check) has completed since:
    a run declares its fields first (the page shows them, with no maps yet) and writes its maps as
    it goes, so the page's samples are to be drawn again with them."""
    return told is not None and any(stage == "completed" and told.get(run) != "completed"
                                    for run, stage in now.items())


def _notice(run: RunStatus, new: bool = False) -> tuple[str, str]:
    if run.state == "completed":
        return f"CAM run completed: {run.label}. Its heatmap fields are in the sidebar.", "success"
    if run.state == "failed":
        return f"CAM run failed: {run.label}: {run.detail or 'no reason given'}", "error"
    if run.stage.startswith("running") and new:
        # a worker took it before the page's next check (2 s): the page never saw it queued, so this
        # first word on it says where it goes from here, as the queued notice would have
        said = f" ({run.detail})" if run.detail else ""
        return f"CAM run started: {run.label}{said}. A worker runs it; this page says when it ends.", "info"
    if run.stage.startswith("running"):
        return f"CAM run running: {run.label}: {run.detail or 'started'}", "info"
    return (f"CAM run queued: {run.label}. A worker runs it (`make worker`, or `fiftyone delegated launch` "
            "with the plugin); this page says when it ends.", "info")
