"""bot/metrics.py and GET /metrics: the instruments, the places that record, and the real bot."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.grid import vary_custom_id
from bot.jobs.stats import JobStats
from bot.jobs.store import JobState, JobStore
from bot.jobs.types import CALLBACK_PATH
from bot.metrics import CALLBACK_OUTCOMES, NO_METRICS, Metrics, recorder
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.errors import ApiError, ApiUnreachable
from tests.conftest import RunningSandbox, Serve
from tests.harness import Harness, click, grid_task, imagine, result_for
from tests.listener_rig import HMAC_KEY, ListenerRig, callback_body, listener_rig, signed
from tests.names import JobKind

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value in ``metrics``' own registry; 0 when it does not exist (yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def parse(text: str) -> Samples:
    """Every sample of a /metrics answer, parsed by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ----- the instruments -----------------------------------------------------------------------


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # a second set of the same names does not collide
    first.upstream_call("generate", 200, 0.3)
    assert value(first, "mjbot_upstream_requests_total", endpoint="generate", code="200") == 1
    assert value(second, "mjbot_upstream_requests_total", endpoint="generate", code="200") == 0
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("mjbot")]


def test_upstream_call_counts_by_endpoint_and_code_and_times_by_endpoint() -> None:
    metrics = Metrics()
    metrics.upstream_call("generate", 200, 0.2)
    metrics.upstream_call("generate", 402, 0.1)
    metrics.upstream_call("generate", "timeout", 30.0)
    metrics.upstream_call("record-info", "unreachable", -1.0)  # a clock step: counted as 0
    requests = "mjbot_upstream_requests_total"
    assert value(metrics, requests, endpoint="generate", code="200") == 1
    assert value(metrics, requests, endpoint="generate", code="402") == 1
    assert value(metrics, requests, endpoint="generate", code="timeout") == 1
    assert value(metrics, requests, endpoint="record-info", code="unreachable") == 1
    latency = "mjbot_upstream_request_duration_seconds"
    assert value(metrics, f"{latency}_count", endpoint="generate") == 3
    assert value(metrics, f"{latency}_sum", endpoint="generate") == pytest.approx(30.3)
    assert value(metrics, f"{latency}_bucket", endpoint="generate", le="0.25") == 2
    assert value(metrics, f"{latency}_sum", endpoint="record-info") == 0


def test_callbacks_by_outcome_start_at_zero_and_unknown_outcomes_are_refused() -> None:
    metrics = Metrics()
    for outcome in CALLBACK_OUTCOMES:
        assert metrics.registry.get_sample_value("mjbot_callbacks_total", {"outcome": outcome}) == 0
    metrics.callback("accepted")
    metrics.callback("bad_signature")
    metrics.callback("something new")
    assert value(metrics, "mjbot_callbacks_total", outcome="accepted") == 1
    assert value(metrics, "mjbot_callbacks_total", outcome="bad_signature") == 1
    assert value(metrics, "mjbot_callbacks_total", outcome="refused") == 1
    assert value(metrics, "mjbot_callbacks_total", outcome="something new") == 0


def test_delivered_observes_completion_to_post_and_skips_missing_times() -> None:
    metrics = Metrics()
    metrics.delivered("upscale", 1000.0, 1003.5)
    metrics.delivered("upscale", None, 1003.5)
    metrics.delivered("imagine", 1000.0, None)
    name = "mjbot_result_post_delay_seconds"
    assert value(metrics, f"{name}_count", kind="upscale") == 1
    assert value(metrics, f"{name}_sum", kind="upscale") == 3.5
    assert value(metrics, f"{name}_count", kind="imagine") == 0


def test_acked_observes_from_handler_start_and_from_creation() -> None:
    metrics = Metrics()
    metrics.acked("button", time.monotonic() - 0.2, time.time() - 1.0)
    # An interaction "created in the future" (our clock behind Discord's) counts as 0, not < 0.
    metrics.acked("button", time.monotonic(), time.time() + 60)
    handler, age = "mjbot_interaction_ack_seconds", "mjbot_interaction_ack_age_seconds"
    assert value(metrics, f"{handler}_count", command="button") == 2
    assert 0.2 <= value(metrics, f"{handler}_sum", command="button") < 1.0
    assert value(metrics, f"{age}_count", command="button") == 2
    assert 1.0 <= value(metrics, f"{age}_sum", command="button") < 2.0


def test_set_jobs_replaces_the_gauge() -> None:
    metrics = Metrics()
    metrics.set_jobs({("upscale", "submitted"): 2, ("imagine", "delivered"): 5})
    metrics.set_jobs({("imagine", "delivered"): 6})
    assert value(metrics, "mjbot_jobs", kind="imagine", state="delivered") == 6
    assert (
        metrics.registry.get_sample_value("mjbot_jobs", {"kind": "upscale", "state": "submitted"})
        is None
    )


def test_render_is_the_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.upstream_call("credit", 200, 0.05)
    metrics.set_jobs({("upscale", "failed"): 1})
    samples = parse(metrics.render().decode())
    assert sample(samples, "mjbot_upstream_requests_total", endpoint="credit", code="200") == 1
    assert sample(samples, "mjbot_jobs", kind="upscale", state="failed") == 1


def test_off_is_a_no_op() -> None:
    assert recorder(None) is NO_METRICS
    assert not NO_METRICS.enabled
    metrics = Metrics()
    assert recorder(metrics) is metrics and metrics.enabled
    NO_METRICS.upstream_call("generate", 200, 1.0)
    NO_METRICS.callback("accepted")
    NO_METRICS.delivered("upscale", 1.0, 2.0)
    NO_METRICS.acked("button", time.monotonic(), time.time())


# ----- the store's count ---------------------------------------------------------------------


async def test_count_by_kind_and_state(tmp_path: Path) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/count.sqlite3")
    try:
        counts = await JobStats(store.database).count_by_kind_and_state()
        assert set(counts) == {(k.value, s.value) for k in JobKind for s in JobState}
        assert set(counts.values()) == {0}
        for index in range(3):
            job = await store.create(
                kind=JobKind.UPSCALE,
                parent_task_id="grid-task-1234",
                image_index=index,
                requester_id=1,
                guild_id=None,
                channel_id=2,
                deadline_seconds=60,
            )
            if index:
                await store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTED)
        await store.create(
            kind=JobKind.IMAGINE, requester_id=1, guild_id=None, channel_id=2, deadline_seconds=60
        )
        counts = await JobStats(store.database).count_by_kind_and_state()
        assert counts[("upscale", "requested")] == 1
        assert counts[("upscale", "submitted")] == 2
        assert counts[("imagine", "requested")] == 1
        assert sum(counts.values()) == 4
    finally:
        await store.close()


# ----- the API client ------------------------------------------------------------------------


async def test_client_records_every_call(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, serve: Serve
) -> None:
    metrics = Metrics()
    client = MidjourneyClient(http, sandbox.base_url, sandbox.key, timeout=5, metrics=metrics)
    task_id = await client.generate("a red fox")
    sandbox.api.complete(task_id)
    await client.record_info(task_id)
    sandbox.api.fail_next("generateUpscale", 402)
    with pytest.raises(ApiError):
        await client.upscale(task_id, 0)
    requests = "mjbot_upstream_requests_total"
    assert value(metrics, requests, endpoint="generate", code="200") == 1
    assert value(metrics, requests, endpoint="record-info", code="200") == 1
    assert value(metrics, requests, endpoint="generateUpscale", code="402") == 1

    # No answer in time.
    hold = sandbox.api.hold("credit")
    slow = MidjourneyClient(http, sandbox.base_url, sandbox.key, timeout=0.2, metrics=metrics)
    with pytest.raises(ApiUnreachable):
        await slow.credits()
    hold.release()
    assert value(metrics, requests, endpoint="credit", code="timeout") == 1

    # Nobody listening.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = MidjourneyClient(http, f"http://127.0.0.1:{port}", "k", timeout=5, metrics=metrics)
    with pytest.raises(ApiUnreachable):
        await closed.credits()
    assert value(metrics, requests, endpoint="credit", code="unreachable") == 1

    # An answer without the vendor's envelope: its HTTP status, or "malformed" when 200.
    async def html(request: web.Request) -> web.Response:
        status = 502 if request.path.endswith("generate") else 200
        return web.Response(text="<html>oops</html>", status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", html)
    odd = MidjourneyClient(http, await serve(app), "k", timeout=5, metrics=metrics)
    for call in (odd.generate("p"), odd.credits()):
        with pytest.raises(ApiUnreachable):
            await call
    assert value(metrics, requests, endpoint="generate", code="502") == 1
    assert value(metrics, requests, endpoint="credit", code="malformed") == 1
    latency = "mjbot_upstream_request_duration_seconds_count"
    assert value(metrics, latency, endpoint="credit") == 3


# ----- the listener --------------------------------------------------------------------------


@pytest.fixture
async def rig(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[ListenerRig]:
    async with listener_rig(tmp_path, sandbox) as made:
        yield made


async def scrape_listener(rig: ListenerRig, base: str) -> Samples:
    """The listener's /metrics, parsed."""
    async with rig.session.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


async def test_callbacks_are_counted_by_outcome(rig: ListenerRig) -> None:
    metrics = Metrics()
    base = await rig.listener(metrics=metrics, hmac_key=HMAC_KEY)
    # Submitted, its task id not saved yet (a crash right after the call): the callback says it.
    job = await rig.submitted_job()
    task_id = rig.sandbox.add_generation(prompt="a red fox")
    own = f"{base}{CALLBACK_PATH}{job.callback_secret}"
    forged = f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}"

    assert await rig.status(forged, callback_body(task_id), headers=signed(task_id)) == 404
    assert await rig.status(f"{base}{CALLBACK_PATH}bad!secret", callback_body(task_id)) == 404
    other_key = signed(task_id, key="another-key")
    assert await rig.status(own, callback_body(task_id), headers=other_key) == 401
    assert await rig.status(own, callback_body(task_id)) == 401  # unsigned
    assert await rig.status(own, data=b"not json", headers=signed(task_id)) == 400
    async with rig.session.get(own) as response:
        assert response.status == 405
    assert await rig.status(own, callback_body(task_id), headers=signed(task_id)) == 200

    samples = await scrape_listener(rig, base)
    counts = {o: sample(samples, "mjbot_callbacks_total", outcome=o) for o in CALLBACK_OUTCOMES}
    assert counts == {
        "accepted": 1,
        "unknown_secret": 2,
        "bad_signature": 2,
        "malformed": 1,
        "refused": 1,
    }
    # The accepted callback leads to delivery: counted in the jobs gauge and the delay histogram.
    await rig.publisher.wait_for(lambda: job.id in [j.id for j in rig.publisher.delivered])
    await rig.trackers[0].wait_idle()
    samples = await scrape_listener(rig, base)
    assert sample(samples, "mjbot_jobs", kind="imagine", state="delivered") == 1
    assert sample(samples, "mjbot_jobs", kind="upscale", state="submitted") == 0
    assert sample(samples, "mjbot_result_post_delay_seconds_count", kind="imagine") == 1


async def test_metrics_route_needs_no_callback_secret_and_works_before_the_tracker(
    rig: ListenerRig,
) -> None:
    metrics = Metrics()
    base = await rig.listener(metrics=metrics, hmac_key=HMAC_KEY, attach=False)
    samples = await scrape_listener(rig, base)  # no signature, no secret, no tracker yet
    assert sample(samples, "mjbot_callbacks_total", outcome="accepted") == 0
    assert not [key for key in samples if key[0] == "mjbot_jobs"]


async def test_a_store_that_fails_leaves_out_only_the_jobs(
    rig: ListenerRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    base = await rig.listener(metrics=metrics)
    metrics.upstream_call("generate", 200, 0.1)
    samples = await scrape_listener(rig, base)
    assert sample(samples, "mjbot_jobs", kind="upscale", state="failed") == 0

    async def down() -> dict[tuple[str, str], int]:
        raise ConnectionRefusedError("database down")

    monkeypatch.setattr(rig.stats, "count_by_kind_and_state", down)
    samples = await scrape_listener(rig, base)
    assert sample(samples, "mjbot_upstream_requests_total", endpoint="generate", code="200") == 1
    # Left out rather than frozen at the last values.
    assert not [key for key in samples if key[0] == "mjbot_jobs"]


async def test_metrics_off_is_404_and_counts_nothing(rig: ListenerRig) -> None:
    base = await rig.listener(metrics=None)
    task_id = rig.sandbox.add_generation()
    unknown = f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}"
    assert await rig.status(unknown, callback_body(task_id)) == 404
    async with rig.session.get(f"{base}/metrics") as response:
        assert response.status == 404


# ----- the real bot --------------------------------------------------------------------------


async def scrape(port: int | None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return response.status, await response.text()


async def test_end_to_end_metrics_after_imagine_and_upscale(harness: Harness) -> None:
    harness.env["METRICS_ENABLED"] = "true"
    double = harness.double
    user = double.add_user("ada")
    async with harness.running() as app:
        grid = await imagine(double, user, "a lighthouse at dawn")
        await click(double, grid, 1, user)
        await result_for(double, 1, user)
        handle = await double.click(grid.id, vary_custom_id(grid_task(grid), 1), user)
        await handle.wait_ack()
        await double.wait_for_message(lambda m: "Variations (image #1)" in m.content)
        # The result is posted just before its job is marked delivered (and observed): wait.
        deadline = time.monotonic() + 10
        while True:
            status, text = await scrape(app.services.listen_port)
            assert status == 200
            samples = parse(text)
            if (
                sample(samples, "mjbot_jobs", kind="upscale", state="delivered") >= 1
                and sample(samples, "mjbot_result_post_delay_seconds_count", kind="upscale") >= 1
                and sample(samples, "mjbot_jobs", kind="vary", state="delivered") == 1
                and sample(samples, "mjbot_result_post_delay_seconds_count", kind="vary") == 1
            ):
                break
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.05)

    requests = "mjbot_upstream_requests_total"
    assert sample(samples, "mjbot_jobs", kind="reroll", state="delivered") == 0
    for endpoint in ("generate", "generateUpscale", "generateVary", "record-info"):
        assert sample(samples, requests, endpoint=endpoint, code="200") >= 1, endpoint
        latency = "mjbot_upstream_request_duration_seconds_count"
        assert sample(samples, latency, endpoint=endpoint) >= 1, endpoint
    assert sample(samples, "mjbot_jobs", kind="imagine", state="delivered") >= 1
    assert sample(samples, "mjbot_result_post_delay_seconds_count", kind="upscale") >= 1
    assert sample(samples, "mjbot_result_post_delay_seconds_count", kind="imagine") >= 1
    for command in ("button", "imagine"):
        assert sample(samples, "mjbot_interaction_ack_seconds_count", command=command) >= 1
        assert sample(samples, "mjbot_interaction_ack_age_seconds_count", command=command) >= 1
    # In sandbox mode the stand-in API calls back to the bot's own listener.
    assert sample(samples, "mjbot_callbacks_total", outcome="accepted") >= 1


async def test_end_to_end_metrics_off_by_default(harness: Harness) -> None:
    assert "METRICS_ENABLED" not in harness.env
    async with harness.running() as app:
        assert app.services.metrics is None
        status, _ = await scrape(app.services.listen_port)
        assert status == 404
