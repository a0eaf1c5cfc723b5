"""litpulse_bootstrap: the baseline and the update files since, then shards, then the index."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from litpulse.core.widths import SHARDS_MAX
from litpulse.pipeline.dag_support import INDEX, dag_args, index_event, run_params, settings

DAG_ID = "litpulse_bootstrap"
#: Fetcher tasks running at once; below `max_active_tasks_per_dag` (4 in airflow.cfg), so
#: the writer always gets a slot.
FETCHERS = 2

DOC_MD = """
### litpulse bootstrap

**Trigger.** By hand, once, for a new deployment (no schedule):
`airflow dags trigger litpulse_bootstrap` (`--conf '{"shards": 16}'` for more embed shards).
The same job as `litpulse bootstrap`.

**A file missing from the listing.** When a number is missing between listed files (a
mirror still copying), the files after it wait: `apply_files` applies those before it, then
fails naming the missing file; clear it once the file is there. Only when NLM withdrew the
file, apply past it with the param `accept_gaps` (default `false`; `litpulse bootstrap
--accept-gaps`): `airflow dags trigger litpulse_bootstrap --conf '{"accept_gaps": true}'`.

**What it does.** `list_files` lists `baseline/` and `updatefiles/` of
`LITPULSE_PUBMED_FILES_URL` and keeps the files not in `source_files`, in order. `fetch_file`
is **mapped** over them (`.expand()`, at most 2 in flight: `max_active_tis_per_dagrun`): each
downloads its file (resuming with HTTP Range) and checks its MD5 into
`<LITPULSE_HOME>/downloads/<store id>`, waiting while `LITPULSE_BOOTSTRAP_PREFETCH` files are
staged there (bounded disk). `apply_files`, running **beside** the fetchers, is the one writer:
it applies the files strictly in order (parsing in `LITPULSE_INGEST_WORKERS` processes),
fetching itself any file no fetcher has staged, and deletes each download once applied. Then
`embed_shard` is mapped over PMID shards and `publish_index` publishes the index, emitting
**`litpulse_index`**. A run that publishes nothing new (a second trigger with nothing pending)
skips `publish_index` and emits no `litpulse_index` event.

**Why one writer.** Fetchers overlap the network with the store; the store is written in file
order by one process (lease `bootstrap-writer`), which gives exactly the state of an
uninterrupted run (a deletion read before its record would leave a different tombstone)
and suits SQLite's single writer. A fetcher never writes the store; a failed download is
left to the writer, which retries it.

**Resuming.** Clear the failed tasks (`airflow tasks clear litpulse_bootstrap --only-failed
--yes`) or trigger a new run: applied files are skipped, staged downloads reused, a file cut
short replayed from where it stopped; finished shards have nothing pending.

**Hosts.** Fetchers and the writer share `<LITPULSE_HOME>/downloads/<store id>`: run this DAG
on one host (LocalExecutor) or give the Celery workers a shared `LITPULSE_HOME`.

**Alerts.** Failures, and tasks that start or finish more than 48 h after the run started,
go to `LITPULSE_ALERT_WEBHOOK_URL`. A run times out after 7 days (alerted).
"""


@dag(
    **dag_args(
        DAG_ID,
        schedule=None,
        tags=["litpulse", "ingest", "bootstrap"],
        doc_md=DOC_MD,
        alert_after_hours=48,
        timeout_hours=24 * 7,
        params={
            "shards": Param(8, type="integer", minimum=1, maximum=SHARDS_MAX, title="PMID shards"),
            "accept_gaps": Param(
                False, type="boolean", title="Apply past a missing file",
                description="Only for a file NLM withdrew: `litpulse bootstrap --accept-gaps`.",
            ),
        },
    )
)
def litpulse_bootstrap() -> None:
    @task(retries=1)
    def list_files() -> list[dict[str, Any]]:
        """The files not applied yet, in order (one small dict each)."""
        from litpulse.pipeline.bootstrap import list_pending

        accept_gaps = bool(run_params(get_current_context())["accept_gaps"])
        return list_pending(settings(), accept_gaps=accept_gaps)

    @task(max_active_tis_per_dagrun=FETCHERS, execution_timeout=dt.timedelta(hours=2))
    def fetch_file(file: dict[str, Any]) -> str:
        """Download and verify one file ahead of the writer; never writes the store."""
        from litpulse.pipeline.bootstrap import fetch_file as run

        return run(settings(), file)

    @task(priority_weight=100, execution_timeout=dt.timedelta(days=6))
    def apply_files() -> dict[str, Any]:
        """The one writer: every pending file, in order; returns the load report."""
        from ingest.bootstrap import load_files

        accept_gaps = bool(run_params(get_current_context())["accept_gaps"])
        return load_files(settings(), prefetch=0, accept_gaps=accept_gaps).to_dict()

    @task(retries=0)
    def plan_shards(loaded: dict[str, Any]) -> list[dict[str, Any]]:
        """One small dict per PMID shard of the embed step."""
        from litpulse.pipeline.planning import plan_embedding_shards

        shards = int(run_params(get_current_context())["shards"])
        return [s.to_dict() for s in plan_embedding_shards(settings(), shards)]

    @task(execution_timeout=dt.timedelta(hours=12), max_active_tis_per_dag=8)
    def embed_shard(shard: dict[str, Any]) -> int:
        """Embed the shard's articles that lack a vector (a finished shard does nothing)."""
        from litpulse.pipeline.planning import EmbeddingShard, embed_shard

        return embed_shard(settings(), EmbeddingShard.from_dict(shard))

    @task(outlets=[INDEX], execution_timeout=dt.timedelta(hours=12))
    def publish_index(embedded: list[int]) -> Any:
        """Build the index for the active model version and publish it atomically; skips
        (no asset event) when nothing new was published."""
        from ranking.refresh import refresh_index

        report = refresh_index(settings(), embed=False).to_dict()
        yield index_event(report, sum(embedded))

    files = list_files()
    fetch_file.expand(file=files)
    loaded = apply_files()
    files >> loaded
    publish_index(embed_shard.expand(shard=plan_shards(loaded)))


litpulse_bootstrap()
