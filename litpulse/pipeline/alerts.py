"""Alerts for the on-call engineer: a log line always, a webhook POST when configured.

The Airflow DAGs call :func:`notify` from their failure callbacks and name
:func:`deadline_missed` in their deadline alerts; the functions here know nothing of
Airflow (they take plain values or a mapping), so the library stays Airflow-free.

Example:
    >>> from litpulse.core.settings import Settings
    >>> notify(Settings.from_env({}), "litpulse_nightly_ingest failed", {"task": "ingest"})
    False
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from litpulse.core.settings import Settings
from litpulse.pipeline.exchange import Deadline, moved_note, timed_opener

__all__ = ["ALERT_TIMEOUT_S", "notify", "deadline_missed", "tell_given_up"]

logger = logging.getLogger(__name__)

#: Seconds the webhook exchange of one alert may take at most, connection to last byte
#: (``LITPULSE_HTTP_TIMEOUT``, capped: the caller, a failure callback, waits on it).
ALERT_TIMEOUT_S = 10.0


def notify(settings: Settings, text: str, details: Mapping[str, Any] | None = None) -> bool:
    """Log an alert and POST it to ``LITPULSE_ALERT_WEBHOOK_URL`` when one is set.

    The body is ``{"text": text, "details": {...}}`` (Slack and most chat webhooks read
    ``text``). A failing webhook is logged, never raised: an alert must not hide the
    failure it reports. The exchange, connection to last byte, takes at most
    ``LITPULSE_HTTP_TIMEOUT``, capped at :data:`ALERT_TIMEOUT_S`
    (:class:`~litpulse.pipeline.exchange.Deadline`): a receiver that answers a byte at a
    time holds the caller no longer.

    Args:
        settings: The settings (webhook URL and timeout).
        text: One line for a human.
        details: Small JSON-ready values (DAG, run, task, try number, log URL).

    Returns:
        Whether a webhook accepted the alert.
    """
    logger.error("ALERT: %s %s", text, json.dumps(dict(details or {}), default=str))
    url = settings.alert_webhook_url
    if not url:
        return False
    body = json.dumps({"text": text, "details": dict(details or {})}, default=str).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    # one deadline for the whole exchange: a receiver dripping its answer a byte at a
    # time kept each read within a per-read timeout, and the caller waiting for ever
    deadline = Deadline.of(settings, ALERT_TIMEOUT_S)
    try:
        with timed_opener(deadline).open(request, timeout=deadline.seconds) as resp:
            ok = 200 <= resp.status < 300
    except urllib.error.HTTPError as exc:  # a redirect too: the alert is not re-sent
        logger.warning("alert webhook %s", moved_note(exc, "alert_webhook_url") or exc)
        return False
    except Exception as exc:  # noqa: BLE001 - an alert must never raise
        logger.warning("alert webhook failed: %s", deadline.said if deadline.expired else exc)
        return False
    if not ok:
        logger.warning("alert webhook answered HTTP %s", resp.status)
    return ok


def tell_given_up(settings: Settings) -> int:
    """Alert every give-up still owed an alert: PMIDs ESearch listed that EFetch never
    returned however often asked, given up (:mod:`ingest.missing`) and not yet told.

    The give-ups are the outbox: each is committed with the run's batch that gave it up,
    and marked told only once the webhook took the alert (or, none set, once it is
    logged), so a process killed between the two, or a webhook down, leaves it owed and
    the next ingest tells it, whatever its source (``litpulse ingest``, ``litpulse
    nightly``, the nightly DAG's E-utilities window: at least once; ``litpulse status``
    counts those owed). Never raises: it runs as an ingest ends, failing or not.

    Returns:
        How many give-ups it told (0: none owed, or the webhook did not take it).
    """
    from ingest.missing import mark_told, untold
    from litpulse.core import db

    try:
        engine = db.connect(settings)
        total, rows = untold(engine)
        if not total:
            return 0
        pmids = [r["pmid"] for r in rows]
        windows = sorted({r["first_missing_in"] for r in rows})
        text = (
            f"litpulse gave up {total} PMID{'s' if total != 1 else ''} ESearch listed but "
            f"EFetch never returned (window {'; '.join(windows[:3])}"
            f"{'; ...' if len(windows) > 3 else ''}): {pmids[:20]}; `litpulse missing` "
            "lists them"
        )
        details = {"windows": windows[:20], "pmids": pmids[:100], "given_up": total}
        if not notify(settings, text, details) and settings.alert_webhook_url:
            return 0  # owed still: the next run tries again
        mark_told(engine, pmids)
        return len(pmids)
    except Exception as exc:  # noqa: BLE001 - an alert must never raise
        logger.warning("given-up PMIDs not alerted (owed to the next run): %s", exc)
        return 0


def deadline_missed(context: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """Deadline-alert callback: a DAG run is still not done by its deadline.

    Named by path in the DAGs' ``DeadlineAlert(callback=SyncCallback(...))``; Airflow calls
    it with the run's context and the alert's ``kwargs`` (``dag_id``, ``hours``).
    """
    from litpulse.core.settings import get_settings

    ctx = dict(context or {})
    dag_run = ctx.get("dag_run")
    run_id = getattr(dag_run, "run_id", None) or ctx.get("run_id")
    dag_id = kwargs.get("dag_id") or getattr(dag_run, "dag_id", None)
    text = f"litpulse: DAG {dag_id} run {run_id} missed its deadline"
    if kwargs.get("hours"):
        text += f" ({kwargs['hours']} h)"
    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - still log the alert with defaults
        logger.warning("settings unreadable in deadline callback: %s", exc)
        settings = Settings()
    notify(settings, text, {"dag_id": dag_id, "run_id": run_id, **kwargs})
