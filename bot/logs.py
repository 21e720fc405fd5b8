"""How log lines look: human-readable text (the default) or JSON lines (LOG_FORMAT=json).

A line about a job carries the job's label, ``job=<id> task=<upstream id or ->`` (Job.label), in
its text. The JSON format lifts those ids into ``job`` and ``task`` fields, present on every line
(null when the line concerns no job, or its task id is not known yet), so no log call has to
change and a new one that uses the label is covered. ``extra={"job": …, "task": …}`` on a call
sets them explicitly.

Formatters run after the handler's filters, so the RedactingFilter (bot.config) has already
blanked secrets in the message and in the exception text this module writes out.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

TEXT = "text"
JSON = "json"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# Job ids are hex; task ids are the vendor's (hex, UUIDs) and "-" while unknown.
_JOB_RE = re.compile(r"\bjob=(\w+)")
_TASK_RE = re.compile(r"\btask=([\w-]+)")


def job_ids(record: logging.LogRecord, message: str) -> tuple[str | None, str | None]:
    """The job and task ids a line concerns: from ``extra``, else the first label in the text."""
    job = getattr(record, "job", None)
    task = getattr(record, "task", None)
    if job is None and (found := _JOB_RE.search(message)):
        job = found.group(1)
    if task is None and (found := _TASK_RE.search(message)):
        task = found.group(1)
    return (
        None if job is None else str(job),
        None if task in (None, "-") else str(task),
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, job, task, and exception
    (the traceback) or stack when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        job, task = job_ids(record, message)
        entry: dict[str, object] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "job": job,
            "task": task,
        }
        # As logging.Formatter does: a traceback already rendered (and redacted) is reused.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII escapes keep each entry on one line whatever the message holds.
        return json.dumps(entry, default=str)


def _utc(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT (``text`` or ``json``)."""
    if log_format == JSON:
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT)
