"""bot/midjourney/client.py against the sandbox, and against servers that misbehave."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.midjourney.client import MAX_ANSWER_BYTES, MidjourneyClient
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.midjourney.models import TaskStatus
from tests.conftest import RunningSandbox, Serve, StartSandbox

CODES = (400, 401, 402, 404, 422, 429, 455, 500, 501, 505)
GENERATE = "/api/v1/mj/generate"
UPSCALE = "/api/v1/mj/generateUpscale"
VARY = "/api/v1/mj/generateVary"
RECORD_INFO = "/api/v1/mj/record-info"
CREDIT = "/api/v1/chat/credit"
OTHER_TASK = "0123456789abcdef0123456789abcdef"

# One call of each kind, by name, for tests that try them all.
CALLS: dict[str, Callable[[MidjourneyClient], Awaitable[object]]] = {
    "generate": lambda client: client.generate("p"),
    "upscale": lambda client: client.upscale(OTHER_TASK, 0),
    "vary": lambda client: client.vary(OTHER_TASK, 1),
    "record-info": lambda client: client.record_info(OTHER_TASK),
    "credits": lambda client: client.credits(),
}


def client_for(
    http: aiohttp.ClientSession, running: RunningSandbox, *, key: str | None = None
) -> MidjourneyClient:
    return MidjourneyClient(http, running.base_url, running.key if key is None else key)


@pytest.fixture
def client(http: aiohttp.ClientSession, sandbox: RunningSandbox) -> MidjourneyClient:
    return client_for(http, sandbox)


def last_body(sandbox: RunningSandbox, endpoint: str) -> Any:
    calls = [call for call in sandbox.api.calls if call.endpoint == endpoint]
    assert calls, f"{endpoint} was not called"
    return calls[-1].body


async def finished_generation(client: MidjourneyClient, sandbox: RunningSandbox) -> str:
    task_id = await client.generate("a red fox")
    sandbox.api.complete(task_id)
    return task_id


# ----- requests as the reference describes them ------------------------------------------------


async def test_generate_sends_the_minimal_body(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    task_id = await client.generate("a red fox")
    assert last_body(sandbox, "generate") == {
        "taskType": "mj_txt2img",
        "prompt": "a red fox",
        "speed": "fast",
    }
    assert sandbox.api.task(task_id).task_type == "mj_txt2img"


async def test_generate_sends_the_optional_fields(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    hook = "https://bot.example.com/callbacks/midjourney/s3cret"
    await client.generate(
        "a red fox", speed="relaxed", aspect_ratio="16:9", version="niji6", callback_url=hook
    )
    assert last_body(sandbox, "generate") == {
        "taskType": "mj_txt2img",
        "prompt": "a red fox",
        "speed": "relaxed",
        "aspectRatio": "16:9",
        "version": "niji6",
        "callBackUrl": hook,
    }


async def test_generate_sends_the_typed_parameters_fields(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    await client.generate("a fox", stylization=0, variety=100, weirdness=3000, translate=True)
    assert last_body(sandbox, "generate") == {
        "taskType": "mj_txt2img",
        "prompt": "a fox",
        "speed": "fast",
        "stylization": 0,
        "variety": 100,
        "weirdness": 3000,
        "enableTranslation": True,
    }
    # Left out when not given: the API's own defaults apply.
    await client.generate("a fox", translate=False)
    assert last_body(sandbox, "generate") == {
        "taskType": "mj_txt2img",
        "prompt": "a fox",
        "speed": "fast",
    }


async def test_upscale_sends_task_and_index_only(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    parent = await finished_generation(client, sandbox)
    upscale_id = await client.upscale(parent, 2)
    assert last_body(sandbox, "generateUpscale") == {"taskId": parent, "imageIndex": 2}
    assert upscale_id != parent
    assert sandbox.api.task(upscale_id).image_index == 2


async def test_upscale_sends_watermark_and_callback_when_given(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    parent = await finished_generation(client, sandbox)
    hook = "https://bot.example.com/callbacks/midjourney/s3cret"
    await client.upscale(parent, 0, watermark="my-server", callback_url=hook)
    assert last_body(sandbox, "generateUpscale") == {
        "taskId": parent,
        "imageIndex": 0,
        "waterMark": "my-server",
        "callBackUrl": hook,
    }


@pytest.mark.parametrize(
    ("task_id", "index"), [("abc", 0), ("bad id!", 0), (OTHER_TASK, 4), (OTHER_TASK, -1)]
)
async def test_upscale_refuses_bad_arguments_before_calling(
    client: MidjourneyClient, sandbox: RunningSandbox, task_id: str, index: int
) -> None:
    with pytest.raises(ValueError):
        await client.upscale(task_id, index)
    assert sandbox.api.count("generateUpscale") == 0


async def test_upscale_refuses_a_bool_index(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    parent = sandbox.api.add_generation()
    with pytest.raises(ValueError):
        await client.upscale(parent, True)
    assert sandbox.api.count("generateUpscale") == 0


@pytest.mark.parametrize(("base", "index"), [(0, 0), (0, 3), (1, 1), (1, 4)])
async def test_vary_sends_the_index_as_given(
    http: aiohttp.ClientSession, start_sandbox: StartSandbox, base: int, index: int
) -> None:
    running = await start_sandbox(vary_index_base=base)
    client = client_for(http, running)
    parent = running.api.add_generation()
    vary_id = await client.vary(parent, index)
    assert last_body(running, "generateVary") == {"taskId": parent, "imageIndex": index}
    assert vary_id != parent
    varied = running.api.task(vary_id)
    assert (varied.task_type, varied.parent_task_id) == ("mj_vary", parent)
    assert varied.image_index == index - base


async def test_vary_sends_watermark_and_callback_when_given(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    parent = sandbox.api.add_generation()
    hook = "https://bot.example.com/callbacks/midjourney/s3cret"
    await client.vary(parent, 2, watermark="my-server", callback_url=hook)
    assert last_body(sandbox, "generateVary") == {
        "taskId": parent,
        "imageIndex": 2,
        "waterMark": "my-server",
        "callBackUrl": hook,
    }


@pytest.mark.parametrize(
    ("task_id", "index"),
    [(OTHER_TASK, 5), (OTHER_TASK, -1), (OTHER_TASK, True), (OTHER_TASK, 1.0), ("bad id!", 1)],
)
async def test_vary_refuses_bad_arguments_before_calling(
    client: MidjourneyClient, sandbox: RunningSandbox, task_id: str, index: Any
) -> None:
    with pytest.raises(ValueError):
        await client.vary(task_id, index)
    assert sandbox.api.count("generateVary") == 0


async def test_vary_index_outside_the_sandbox_base_is_api_error_422(
    http: aiohttp.ClientSession, start_sandbox: StartSandbox
) -> None:
    running = await start_sandbox(vary_index_base=1)
    client = client_for(http, running)
    parent = running.api.add_generation()
    with pytest.raises(ApiError) as caught:
        await client.vary(parent, 0)
    assert caught.value.code == 422
    assert "from 1 to 4" in caught.value.user_message
    assert running.api.credits == 1000


async def test_record_info_of_a_variation_has_four_urls_and_the_options(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    parent = await client.generate("a red fox", speed="turbo", aspect_ratio="2:3", version="7")
    sandbox.api.complete(parent)
    vary_id = await client.vary(parent, 1)
    sandbox.api.complete(vary_id)
    task = await client.record_info(vary_id)
    assert task.status is TaskStatus.SUCCEEDED
    assert task.result_urls == tuple(
        f"{sandbox.base_url}/files/{vary_id}_0_{index}.png" for index in range(4)
    )
    assert task.prompt == "a red fox"
    assert task.options == {"speed": "turbo", "aspect_ratio": "2:3", "version": "7"}


async def test_requests_carry_the_bearer_key_and_json(serve: Serve, http: Any) -> None:
    seen: list[tuple[str, str, dict[str, str], str | None, str | None, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            (
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                await request.text(),
            )
        )
        data: Any = 7 if request.path == CREDIT else {"taskId": OTHER_TASK}
        if request.path == RECORD_INFO:
            data = {"taskId": OTHER_TASK, "successFlag": 0}
        return web.json_response({"code": 200, "msg": "success", "data": data})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    base = await serve(app)
    client = MidjourneyClient(http, base + "/", "the-key")
    assert client.base_url == base
    await client.generate("p")
    await client.upscale(OTHER_TASK, 1)
    await client.vary(OTHER_TASK, 4)
    await client.record_info(OTHER_TASK)
    assert await client.credits() == 7
    assert [(method, path, query) for method, path, query, *_ in seen] == [
        ("POST", GENERATE, {}),
        ("POST", UPSCALE, {}),
        ("POST", VARY, {}),
        ("GET", RECORD_INFO, {"taskId": OTHER_TASK}),
        ("GET", CREDIT, {}),
    ]
    assert {auth for _, _, _, auth, _, _ in seen} == {"Bearer the-key"}
    for method, _, _, _, content_type, body in seen:
        if method == "POST":
            assert content_type is not None and content_type.startswith("application/json")
            assert isinstance(json.loads(body), dict)


# ----- answers ---------------------------------------------------------------------------------


async def test_record_info_before_and_after_complete(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    task_id = await client.generate("a red fox")
    pending = await client.record_info(task_id)
    assert (pending.task_id, pending.status) == (task_id, TaskStatus.PENDING)
    assert pending.result_urls == ()
    assert pending.completed_at is None
    assert pending.prompt == "a red fox"

    sandbox.api.complete(task_id)
    done = await client.record_info(task_id)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.result_urls == tuple(
        f"{sandbox.base_url}/files/{task_id}_0_{index}.png" for index in range(4)
    )
    assert done.completed_at is not None
    assert done.error is None


async def test_record_info_of_an_upscale_has_one_url(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    parent = await finished_generation(client, sandbox)
    upscale_id = await client.upscale(parent, 3)
    assert (await client.record_info(upscale_id)).status is TaskStatus.PENDING
    sandbox.api.complete(upscale_id)
    task = await client.record_info(upscale_id)
    assert task.status is TaskStatus.SUCCEEDED
    assert task.result_urls == (f"{sandbox.base_url}/files/{upscale_id}_0_0.png",)


@pytest.mark.parametrize("flag", [2, 3])
async def test_record_info_of_a_failed_task(
    client: MidjourneyClient, sandbox: RunningSandbox, flag: int
) -> None:
    task_id = await client.generate("a red fox")
    sandbox.api.fail(task_id, "banned prompt", success_flag=flag)
    task = await client.record_info(task_id)
    assert (task.status, task.error, task.result_urls) == (TaskStatus.FAILED, "banned prompt", ())


async def test_record_info_of_an_unknown_task_is_404(client: MidjourneyClient) -> None:
    with pytest.raises(ApiError) as caught:
        await client.record_info(OTHER_TASK)
    assert caught.value.code == 404


async def test_credits(client: MidjourneyClient, sandbox: RunningSandbox) -> None:
    assert await client.credits() == 1000
    await client.generate("a red fox")
    assert await client.credits() == 1000 - sandbox.api.generation_cost


# ----- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("as_http_status", [True, False], ids=["http-status", "body-only"])
@pytest.mark.parametrize("code", CODES)
async def test_every_error_code_is_an_api_error(
    http: aiohttp.ClientSession, start_sandbox: StartSandbox, code: int, as_http_status: bool
) -> None:
    running = await start_sandbox(errors_as_http_status=as_http_status)
    client = client_for(http, running)
    running.api.fail_next("generate", code, "injected")
    with pytest.raises(ApiError) as caught:
        await client.generate("a red fox")
    assert (caught.value.code, caught.value.msg) == (code, "injected")
    # The fault was used up: the next call goes through.
    assert await client.generate("a red fox")


@pytest.mark.parametrize("as_http_status", [True, False], ids=["http-status", "body-only"])
@pytest.mark.parametrize(
    ("endpoint", "call"),
    [
        ("generateUpscale", lambda client, parent: client.upscale(parent, 1)),
        ("generateVary", lambda client, parent: client.vary(parent, 1)),
        ("record-info", lambda client, parent: client.record_info(parent)),
        ("credit", lambda client, parent: client.credits()),
    ],
    ids=["upscale", "vary", "record-info", "credit"],
)
async def test_errors_on_every_endpoint(
    http: aiohttp.ClientSession,
    start_sandbox: StartSandbox,
    as_http_status: bool,
    endpoint: Any,
    call: Callable[[MidjourneyClient, str], Awaitable[object]],
) -> None:
    running = await start_sandbox(errors_as_http_status=as_http_status)
    client = client_for(http, running)
    parent = running.api.add_generation()
    for code in (402, 429, 455):
        running.api.fail_next(endpoint, code)
        with pytest.raises(ApiError) as caught:
            await call(client, parent)
        assert caught.value.code == code
    await call(client, parent)


async def test_sandbox_validation_error_carries_its_message(
    client: MidjourneyClient, sandbox: RunningSandbox
) -> None:
    running = await client.generate("a red fox")
    with pytest.raises(ApiError) as caught:
        await client.upscale(running, 0)
    assert caught.value.code == 422
    assert "generating" in caught.value.user_message


@pytest.mark.parametrize("as_http_status", [True, False], ids=["http-status", "body-only"])
async def test_wrong_key_is_401(
    http: aiohttp.ClientSession, start_sandbox: StartSandbox, as_http_status: bool
) -> None:
    running = await start_sandbox(errors_as_http_status=as_http_status)
    client = client_for(http, running, key="wrong-key")
    for call in ("credits", "generate", "record-info"):
        with pytest.raises(ApiError) as caught:
            await CALLS[call](client)
        assert caught.value.code == 401
    assert running.api.credits == 1000


async def test_status_error_with_a_200_body_is_still_an_error(serve: Serve, http: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"code": 200, "msg": "success", "data": 5}, status=500)

    app = web.Application()
    app.router.add_get(CREDIT, handler)
    client = MidjourneyClient(http, await serve(app), "k")
    with pytest.raises(ApiError) as caught:
        await client.credits()
    assert caught.value.code == 500


# ----- no usable answer ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_closed_port_is_unreachable_and_not_done(http: aiohttp.ClientSession) -> None:
    client = MidjourneyClient(http, f"http://127.0.0.1:{closed_port()}", "k", timeout=5)
    for call in sorted(CALLS):
        with pytest.raises(ApiUnreachable) as caught:
            await CALLS[call](client)
        assert caught.value.maybe_done is False


class StalledConnector(aiohttp.TCPConnector):
    """A network where connecting never completes (a black-holed SYN), nothing ever sent."""

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(30)
        raise AssertionError("the connect timeout should have fired")


async def test_connect_timeout_is_unreachable_and_not_done() -> None:
    async with aiohttp.ClientSession(connector=StalledConnector()) as session:
        client = MidjourneyClient(session, "http://api.example.invalid", "k", timeout=0.1)
        with pytest.raises(ApiUnreachable) as caught:
            await client.upscale(OTHER_TASK, 0)
    assert caught.value.maybe_done is False
    assert caught.value.retryable


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake_api(serve: Serve, http: aiohttp.ClientSession) -> Callable[..., Any]:
    """A client pointed at a server that answers every path with ``answer``."""

    async def make(answer: Answer, *, timeout: float = 5.0) -> MidjourneyClient:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        return MidjourneyClient(http, await serve(app), "k", timeout=timeout)

    return make


def fixed(body: bytes | str, status: int = 200, content_type: str = "application/json") -> Answer:
    async def answer(request: web.Request) -> web.Response:
        raw = body.encode() if isinstance(body, str) else body
        return web.Response(body=raw, status=status, content_type=content_type)

    return answer


def envelope(data: Any, code: int = 200) -> str:
    return json.dumps({"code": code, "msg": "success", "data": data})


HTML = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(
    ("body", "status", "content_type"),
    [
        (HTML, 200, "text/html"),
        (HTML, 502, "text/html"),
        (HTML, 500, "text/html"),
        ("not json at all", 200, "text/plain"),
        ("", 200, "application/json"),
        ('{"code": 200, "msg": "success", "data": ', 200, "application/json"),
        ("[200, 1]", 200, "application/json"),
        ('{"msg": "success", "data": 1}', 200, "application/json"),
        ('{"code": "abc", "data": 1}', 200, "application/json"),
        ('{"code": true, "data": 1}', 200, "application/json"),
        ("null", 200, "application/json"),
    ],
    ids=[
        "html-200",
        "html-502",
        "html-500",
        "text",
        "empty",
        "truncated",
        "list",
        "no-code",
        "code-not-number",
        "code-bool",
        "null",
    ],
)
async def test_answer_that_is_not_an_envelope_is_unreachable_maybe_done(
    fake_api: Callable[..., Any], call: str, body: str, status: int, content_type: str
) -> None:
    client = await fake_api(fixed(body, status, content_type))
    with pytest.raises(ApiUnreachable) as caught:
        await CALLS[call](client)
    assert caught.value.maybe_done is True


@pytest.mark.parametrize("status", [401, 402, 404, 429, 455])
async def test_error_status_without_envelope_keeps_its_code(
    fake_api: Callable[..., Any], status: int
) -> None:
    client = await fake_api(fixed(HTML, status, "text/html"))
    with pytest.raises(ApiError) as caught:
        await client.generate("p")
    assert caught.value.code == status


@pytest.mark.parametrize(
    "body", ['{"code": "²", "msg": "", "data": 1}', "[" * 100_000], ids=["superscript", "deep"]
)
async def test_odd_answers_are_unreachable_not_a_crash(
    fake_api: Callable[..., Any], body: str
) -> None:
    client = await fake_api(fixed(body))
    with pytest.raises(ApiUnreachable):
        await client.credits()


@pytest.mark.parametrize("call", ["generate", "upscale", "vary"])
@pytest.mark.parametrize(
    "data", [None, {}, {"taskId": None}, {"taskId": "bad id!"}, {"taskId": 12345678}, "abcdef"]
)
async def test_accepted_without_task_id_is_unreachable_maybe_done(
    fake_api: Callable[..., Any], call: str, data: Any
) -> None:
    client = await fake_api(fixed(envelope(data)))
    with pytest.raises(ApiUnreachable) as caught:
        await CALLS[call](client)
    # The API said yes: a task may exist and be charged, so it must not be retried blindly.
    assert caught.value.maybe_done is True


@pytest.mark.parametrize("data", ["lots", None, True, {"credits": 5}, [5]])
async def test_credits_that_are_not_a_number(fake_api: Callable[..., Any], data: Any) -> None:
    client = await fake_api(fixed(envelope(data)))
    with pytest.raises(ApiUnreachable) as caught:
        await client.credits()
    assert caught.value.maybe_done is True


@pytest.mark.parametrize(
    "data",
    [
        {"taskId": "4edb3c5d9e0f4a1b8c2d3e4f5a6b7c8d", "successFlag": 0},
        {"taskId": OTHER_TASK.upper(), "successFlag": 0},
    ],
    ids=["another-task", "other-case"],
)
async def test_record_info_about_another_task_is_unreachable(
    fake_api: Callable[..., Any], data: dict[str, Any]
) -> None:
    client = await fake_api(fixed(envelope(data)))
    with pytest.raises(ApiUnreachable):
        await client.record_info(OTHER_TASK)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"successFlag": 1},
        {"taskId": OTHER_TASK, "successFlag": 1, "resultInfoJson": None},
        {"taskId": OTHER_TASK, "successFlag": "x"},
    ],
)
async def test_malformed_record_info_is_unreachable(
    fake_api: Callable[..., Any], data: Any
) -> None:
    client = await fake_api(fixed(envelope(data)))
    with pytest.raises(ApiUnreachable) as caught:
        await client.record_info(OTHER_TASK)
    assert caught.value.maybe_done is True


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_hanging_server_times_out_maybe_done(
    fake_api: Callable[..., Any], release: asyncio.Event, call: str
) -> None:
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"code": 200, "msg": "success", "data": 1})

    client = await fake_api(hang, timeout=0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ApiUnreachable) as caught:
        await CALLS[call](client)
    assert caught.value.maybe_done is True
    assert arrived.is_set()
    assert loop.time() - began < 5


async def test_connection_dropped_mid_answer_is_maybe_done(fake_api: Callable[..., Any]) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(b'{"code": 200, ')
        assert request.transport is not None
        request.transport.close()
        return response

    client = await fake_api(drop)
    with pytest.raises(ApiUnreachable) as caught:
        await client.generate("p")
    assert caught.value.maybe_done is True


async def test_answer_over_the_size_limit_is_refused(fake_api: Callable[..., Any]) -> None:
    body = json.dumps({"code": 200, "msg": "x" * (MAX_ANSWER_BYTES + 10), "data": 5})
    client = await fake_api(fixed(body))
    with pytest.raises(ApiUnreachable) as caught:
        await client.credits()
    assert caught.value.maybe_done is True


# A valid answer below MAX_ANSWER_BYTES that arrives in more than one piece is read only up to
# the first piece: StreamReader.read(n) returns what is buffered, not n bytes or EOF. 900 kB on
# loopback reliably arrives in several reads (asyncio reads at most 256 kB at a time); over TLS a
# much smaller answer split across records or chunks hits the same path.
async def test_answer_below_the_size_limit_is_read_whole(fake_api: Callable[..., Any]) -> None:
    body = json.dumps({"code": 200, "msg": "x" * 900_000, "data": 5})
    assert len(body) < MAX_ANSWER_BYTES
    client = await fake_api(fixed(body))
    assert await client.credits() == 5


# ----- the refusal observer (how the low-credit warning hears of a 402) -------------------------


@pytest.mark.parametrize(
    ("body", "status", "content_type"),
    [
        (envelope(None, 402), 200, "application/json"),
        (envelope(None, 402), 402, "application/json"),
        (HTML, 402, "text/html"),
    ],
    ids=["body-code", "both", "http-status-only"],
)
async def test_every_refusal_is_told_to_the_observer_as_it_is_raised(
    fake_api: Callable[..., Any], body: str, status: int, content_type: str
) -> None:
    client = await fake_api(fixed(body, status, content_type))
    heard: list[ApiError] = []
    client.on_refusal = heard.append
    for call in sorted(CALLS):
        with pytest.raises(ApiError) as caught:
            await CALLS[call](client)
        assert heard[-1] is caught.value and caught.value.code == 402
    assert len(heard) == len(CALLS)


async def test_answers_that_are_no_refusal_are_not_told(
    client: MidjourneyClient, fake_api: Callable[..., Any]
) -> None:
    heard: list[ApiError] = []
    client.on_refusal = heard.append
    await client.credits()
    unreachable = await fake_api(fixed(HTML, 502, "text/html"))
    unreachable.on_refusal = heard.append
    with pytest.raises(ApiUnreachable):
        await unreachable.generate("p")
    assert heard == []


async def test_a_failing_observer_leaves_the_refusal_as_it_was(
    fake_api: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    client = await fake_api(fixed(envelope(None, 402)))

    def broken(error: ApiError) -> None:
        raise RuntimeError("a bug in the observer")

    client.on_refusal = broken
    with pytest.raises(ApiError) as caught:
        await client.generate("p")
    assert caught.value.code == 402
    assert "the refusal observer failed" in caplog.text


async def test_a_refusal_quoting_the_callback_url_shows_no_secret(
    fake_api: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-per-job-Secret_0123456789"
    url = f"https://bot.example.com/callbacks/midjourney/{secret}"
    body = json.dumps({"code": 422, "msg": f"callBackUrl {url} is not reachable", "data": None})
    client = await fake_api(fixed(body, 422))
    caplog.set_level(logging.INFO)
    with pytest.raises(ApiError) as caught:
        await client.upscale("task-123456", 0, callback_url=url)
    assert secret not in caught.value.user_message and secret not in str(caught.value)
    assert "callbacks/midjourney/…" in caught.value.msg
    assert secret not in caplog.text and "refused: code=422" in caplog.text
