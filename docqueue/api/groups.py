"""Job groups: several tasks over the same documents in one call
(:meth:`Client.submit_tasks`), with their results joined per document."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ApiError
from docqueue.api.jobs import _after
from docqueue.api.models import known_model
from docqueue.api.schemas import GroupCreate, GroupOut, JobOut, ResultsPage, State
from docqueue.core.groups import JobGroup, TaskSpec
from docqueue.jobspec import JobSpec
from docqueue.producer.client import UnknownJob

router = APIRouter(prefix="/api", tags=["job groups"])


def existing_group(group_id: str, client: ClientDep) -> JobGroup:
    """The group ``group_id`` names; 404 when there is none."""
    if len(group_id) > 32 or "\x00" in group_id:
        raise UnknownJob(group_id[:40])
    return client.group(group_id)


GroupDep = Annotated[JobGroup, Depends(existing_group)]


@router.post("/job-groups", status_code=201, summary="Run several tasks over a list of documents")
def create_group(body: GroupCreate, response: Response, client: ClientDep) -> GroupOut:
    """One job per task (each on its model's own queue) over the same documents; read
    the results joined per document from `GET /api/job-groups/{id}/results`."""
    for spec in body.tasks:
        known_model(client, spec.model, spec.task)
    group = client.enqueue_tasks(
        [TaskSpec(t.task, t.model, t.params) for t in body.tasks],
        JobSpec("", "", name=body.name, reuse=body.reuse),
        body.documents_for_client(),
    )
    total = len(body.documents)
    if all(job.rejected >= total for job in group.jobs):
        first = next(group.results())
        for job in group.jobs:
            job.delete()
        why = first[group.labels[0]]["error"]
        raise ApiError(
            422,
            f"all {total} documents were refused (document {first['seq']}: {why}); "
            "nothing was queued",
            "documents",
        )
    return group_out(group)


@router.get("/job-groups/{group_id}", summary="A job group's status: each task's job")
def group_status(group: GroupDep) -> GroupOut:
    return group_out(group)


@router.get(
    "/job-groups/{group_id}/results",
    summary="A page of a job group's results, joined per document, in input order",
)
def group_results(
    group: GroupDep,
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the page before")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ResultsPage:
    """Each row: `id`, `seq`, `status` (the document's overall state), then one object
    per task under its label with that task's fields, as `docqueue annotate` writes
    them with several `--task`."""
    rows = group.results_page(_after(cursor), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return ResultsPage(data=rows, next_cursor=str(rows[-1]["seq"]) if more else None)


def group_out(group: JobGroup) -> GroupOut:
    jobs = [JobOut.of_status(job.status()) for job in group.jobs]
    states = {job.state for job in jobs}
    state: State = "finished"
    if "cancelled" in states:
        state = "cancelled"
    elif "failed" in states:
        state = "failed"
    elif "running" in states:
        state = "running"
    return GroupOut(id=group.id, labels=group.labels, jobs=jobs, state=state)
