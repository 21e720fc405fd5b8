"""Prometheus metrics, served at GET /metrics when METRICS_ENABLED is on.

Every instrument lives in a registry of its own (not prometheus_client's global one), so tests
and several bots in one process never see each other's numbers. The parts that record take an
optional :class:`Metrics`; ``None`` means metrics are off, and :func:`recorder` turns it into a
no-op, so each call site stays one line whether metrics are on or not.

Jobs by kind and state are not counted by hand: the /metrics handler asks the store (one GROUP BY)
at each scrape, so the numbers are right across restarts and replicas sharing one database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "NO_METRICS", "Metrics", "Recorder", "recorder"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIX = "mjbot"

# The API answers in well under a second normally; its time-out is 30 s.
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
# From the bot seeing a task done to its result in Discord: a download, maybe a re-encode, a post.
DELIVERY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
# Discord wants an acknowledgement within 3 s, so the buckets are fine around that.
ACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0)

# Callback outcomes (the `outcome` label of mjbot_callbacks_total).
ACCEPTED = "accepted"
UNKNOWN_SECRET = "unknown_secret"
BAD_SIGNATURE = "bad_signature"
MALFORMED = "malformed"
REFUSED = "refused"
CALLBACK_OUTCOMES = (ACCEPTED, UNKNOWN_SECRET, BAD_SIGNATURE, MALFORMED, REFUSED)


class Recorder:
    """The recording interface, doing nothing: what the parts hold while metrics are off."""

    enabled = False

    def upstream_call(self, endpoint: str, code: int | str, seconds: float) -> None:
        """One call to the API: its endpoint, the vendor's code (or ``unreachable``,
        ``timeout``, ``error``) and how long it took."""

    def callback(self, outcome: str) -> None:
        """One request to the callback route, by outcome (see CALLBACK_OUTCOMES)."""

    def delivered(self, kind: str, completed_at: float | None, delivered_at: float | None) -> None:
        """A job's result posted (Unix times of the task seen completed and of the post); a
        job missing either time is not observed."""

    def acked(self, command: str, started: float, created_at: float) -> None:
        """An interaction acknowledged now; ``started`` is ``time.monotonic()`` when the handler
        began, ``created_at`` the Unix time of the interaction's snowflake."""


NO_METRICS = Recorder()


def recorder(metrics: Metrics | None) -> Recorder:
    """``metrics``, or the no-op when metrics are off."""
    return metrics if metrics is not None else NO_METRICS


class Metrics(Recorder):
    enabled = True

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Gauge(
            f"{PREFIX}_jobs",
            "Jobs in the store by kind and state (counted from the database at each scrape)",
            ["kind", "state"],
            registry=r,
        )
        self.upstream_requests = Counter(
            f"{PREFIX}_upstream_requests",
            "Calls to the Midjourney API by endpoint and outcome code: the vendor's code "
            "(200 = success), or unreachable / timeout / error when no answer came",
            ["endpoint", "code"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Time a call to the Midjourney API took, answered or not",
            ["endpoint"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter(
            f"{PREFIX}_callbacks",
            "Requests to the callback route by outcome: accepted, unknown_secret, "
            "bad_signature, malformed (unreadable body or type), refused (anything else)",
            ["outcome"],
            registry=r,
        )
        self.delivery_delay = Histogram(
            f"{PREFIX}_result_post_delay_seconds",
            "From the bot confirming a task completed (callback or poll, then record-info) to "
            "its result posted in Discord",
            ["kind"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.ack_handler = Histogram(
            f"{PREFIX}_interaction_ack_seconds",
            "From the bot's handler starting to the interaction acknowledged (what the bot "
            "controls, plus the acknowledgement's round trip to Discord)",
            ["command"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.ack_age = Histogram(
            f"{PREFIX}_interaction_ack_age_seconds",
            "From the interaction's creation (its snowflake time, by Discord's clock) to it "
            "acknowledged: includes gateway delivery and clock skew; Discord allows 3 s",
            ["command"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        # Every outcome shows from the start (at 0), so a rate is defined before the first one.
        for outcome in CALLBACK_OUTCOMES:
            self.callbacks.labels(outcome)

    def upstream_call(self, endpoint: str, code: int | str, seconds: float) -> None:
        self.upstream_requests.labels(endpoint, str(code)).inc()
        self.upstream_latency.labels(endpoint).observe(max(0.0, seconds))

    def callback(self, outcome: str) -> None:
        self.callbacks.labels(outcome if outcome in CALLBACK_OUTCOMES else REFUSED).inc()

    def delivered(self, kind: str, completed_at: float | None, delivered_at: float | None) -> None:
        if completed_at is not None and delivered_at is not None:
            self.delivery_delay.labels(kind).observe(max(0.0, delivered_at - completed_at))

    def acked(self, command: str, started: float, created_at: float) -> None:
        self.ack_handler.labels(command).observe(max(0.0, time.monotonic() - started))
        # A clock behind Discord's would make this negative: 0 is the honest floor.
        self.ack_age.labels(command).observe(max(0.0, time.time() - created_at))

    def set_jobs(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the jobs gauge with ``counts`` (from JobStore.count_by_kind_and_state); a
        combination no longer counted disappears rather than keeping its last value."""
        self.jobs.clear()
        for (kind, state), count in counts.items():
            self.jobs.labels(kind, state).set(count)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
