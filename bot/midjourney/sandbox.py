"""An in-process stand-in of the Midjourney API (midapi.ai / kie.ai), as an aiohttp application.

It serves the same paths and envelopes as the vendors document them, so the bot can be tried end to
end without credits (``MJ_API_BASE_URL=sandbox``, mounted under the bot's listener) and tests can
drive every outcome over real HTTP: slow or held answers, injected error codes, failed generations
and callbacks that need retries. Nothing in it talks to the real service.

Error codes chosen where the vendor is silent:

- body that is not a JSON object: 400;
- missing or wrong ``Authorization: Bearer``: 401;
- not enough credits for the call: 402;
- unknown task id (upscale or variation parent, record-info, result file): 404;
- any parameter that is missing or invalid, and an upscale or variation of a task that has not
  succeeded (still running or failed) or is no grid of four (an upscale): 422, ``msg`` naming the
  problem.

A variation (generateVary) is a new grid of four, charged ``vary_cost``, that can be upscaled or
varied in turn. The vendors' docs give its ``imageIndex`` as 0–3 and as 1–4, so ``vary_index_base``
chooses which range is accepted (a value outside it is a 422, nothing charged); the task records
the 0-based image that was varied, and its paramJson carries the parent's prompt and options.

A generation of ``mj_img2img``, ``mj_style_reference`` or ``mj_omni_reference`` needs
``fileUrls``; the sandbox fetches each with its own HTTP session before charging, as the vendor
must, and answers 422 naming fileUrls (never the link, which may carry a token) when one cannot
be fetched or is no image. The last inputs it fetched are in ``fetched`` (their URL, SHA-256
and size, not their bytes: SANDBOX=1 runs for the bot's life), and the light squares of that grid
are the images' mean colour, so a test can tell the grid depends on them. ``ow`` (1–1000) is
taken with ``mj_omni_reference`` only.

A video (``mj_video``, ``mj_video_hd``) needs ``motion`` (low|high) and exactly one image in
``fileUrls`` (fetched like the others); ``videoBatchSize`` 1, 2 or 4 makes that many videos,
served as small real MP4 files (``video_bytes_of``). generateVideoExtend makes one longer video
of one video of a finished video task (``index`` from ``extend_index_base``), at most four times
over; a fifth is a 422, nothing charged.

With ``errors_as_http_status`` (the default) the HTTP status equals ``code``; without it every
answer is HTTP 200 and only the body's ``code`` tells an error, the other reading of the docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import io
import json
import logging
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, Literal, NamedTuple, TypeGuard, get_args

import aiohttp
from aiohttp import web
from PIL import Image
from yarl import URL

from bot.midjourney.models import GRID_SIZE, webhook_signature
from bot.midjourney.sandbox_video import make_mp4
from bot.tasks import BackgroundTasks

log = logging.getLogger(__name__)

Endpoint = Literal[
    "generate",
    "generateUpscale",
    "generateVary",
    "generateVideoExtend",
    "record-info",
    "credit",
    "download-url",
    "files",
]
ENDPOINTS: frozenset[str] = frozenset(get_args(Endpoint))

TASK_TYPES = frozenset(
    (
        "mj_txt2img",
        "mj_img2img",
        "mj_style_reference",
        "mj_omni_reference",
        "mj_video",
        "mj_video_hd",
    )
)
SPEEDS = frozenset(("relaxed", "fast", "turbo"))
ASPECT_RATIOS = frozenset(
    ("1:2", "9:16", "2:3", "3:4", "5:6", "6:5", "4:3", "3:2", "1:1", "16:9", "2:1")
)
VERSIONS = frozenset(("7", "6.1", "6", "5.2", "5.1", "niji6"))
INT_RANGES: dict[str, tuple[int, int]] = {
    "variety": (0, 100),
    "stylization": (0, 1000),
    "weirdness": (0, 3000),
}
MAX_PROMPT_CHARS = 2000
# The vendor leaves the taskType of an upscale undocumented; the bot must not rely on it anyway.
UPSCALE_TASK_TYPE = "mj_upscale"
# Undocumented as well; the bot keys variations off its own records too.
VARY_TASK_TYPE = "mj_vary"
# What a variation's paramJson takes over from its parent, so its prompt can be read back.
VARY_INHERITED_PARAMS = ("prompt", "speed", "aspectRatio", "version")
FAIL_MARKER = "--fail"
# Task types made from images: fileUrls required, each fetched before anything is charged.
IMAGE_TASK_TYPES = frozenset(("mj_img2img", "mj_style_reference", "mj_omni_reference"))
OMNI_TASK_TYPE = "mj_omni_reference"
# Videos: made from one image, a batch of 1, 2 or 4; an extension is one video, and a video is
# extended at most four times (about 21 s), as on Midjourney.
VIDEO_TASK_TYPES = frozenset(("mj_video", "mj_video_hd"))
HD_VIDEO_TASK_TYPE = "mj_video_hd"
EXTEND_TASK_TYPES = frozenset(("mj_video_extend_auto", "mj_video_extend_manual"))
MOTIONS = frozenset(("low", "high"))
VIDEO_BATCH_SIZES = (1, 2, 4)
MAX_EXTENSIONS = 4
# HD is priced at three times SD (third-party price lists).
HD_TIMES = 3
MAX_FILE_URLS = 5
MAX_INPUT_BYTES = 32 * 1024 * 1024
INPUT_FETCH_SECONDS = 10.0
# Input images remembered in ``fetched`` (for tests), and the side an input is decoded down to
# before its mean colour is taken.
FETCHED_KEPT = 8
MEAN_SIDE = 64

DEFAULT_MESSAGES: dict[int, str] = {
    400: "bad request",
    401: "missing or invalid credentials",
    402: "insufficient credits",
    404: "not found",
    422: "validation error",
    429: "rate limited",
    455: "service unavailable",
    500: "server error",
    501: "generation failed",
    505: "feature disabled",
}

RUNNING: Final = 0
SUCCESS: Final = 1
FAILED: Final = 2

_FILE_ROUTE = "mj-sandbox-file"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FetchedInput(NamedTuple):
    """An input image the sandbox fetched: its bytes are not kept."""

    url: str
    sha256: str
    size: int


class SandboxCall(NamedTuple):
    """One request as received: parsed JSON body (raw text if not JSON) or the GET query, and
    when it arrived (``time.time()``: the vendor's side of the pace, comparable across the
    processes of one machine)."""

    endpoint: str
    body: Any
    at: float = 0.0


class CallbackAttempt(NamedTuple):
    """One POST to a task's callBackUrl; ``status`` is None when no HTTP answer came back."""

    task_id: str
    url: str
    attempt: int
    payload: dict[str, Any]
    status: int | None
    error: str | None


@dataclass
class SandboxTask:
    """The sandbox's record of one task; ``success_flag`` uses the vendor's 0/1/2/3."""

    task_id: str
    task_type: str
    params: dict[str, Any]
    created_at: datetime
    # Alternating per task so clients meet both time formats the vendor is known to send.
    epoch_millis: bool
    parent_task_id: str | None = None
    image_index: int | None = None
    callback_url: str | None = None
    # Where the creating request came from: callbacks have no request to build URLs from.
    origin: URL | None = None
    # The endpoint added from outside that made it (add_endpoint), None for a built-in one.
    endpoint: SandboxEndpoint | None = None
    success_flag: int = RUNNING
    completed_at: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    fail_message: str | None = None
    # The mean colour of the images it was made from (fileUrls), which tints its grid.
    tint: bytes | None = None
    # A video's: how many times it was extended, and whether it is HD.
    extensions: int = 0
    hd: bool = False
    timer: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def result_count(self) -> int:
        if self.endpoint is not None:
            return self.endpoint.results
        if self.task_type in VIDEO_TASK_TYPES:
            batch = self.params.get("videoBatchSize", 1)
            return batch if isinstance(batch, int) else 1
        return 1 if self.task_type in (UPSCALE_TASK_TYPE, *EXTEND_TASK_TYPES) else GRID_SIZE

    @property
    def is_video(self) -> bool:
        return self.task_type in VIDEO_TASK_TYPES or self.task_type in EXTEND_TASK_TYPES


@dataclass(frozen=True)
class SandboxEndpoint:
    """A task endpoint added from outside (:meth:`SandboxAPI.add_endpoint`), for a kind of job
    the sandbox has no endpoint of its own for."""

    name: str
    task_type: str
    cost: int
    results: int
    # The PNG of result ``index`` of a finished task of this endpoint.
    make_result: Callable[[SandboxTask, int], bytes]


class SandboxHold:
    """Answers of one endpoint kept back until ``release()`` (see :meth:`SandboxAPI.hold`)."""

    def __init__(self, endpoint: str, times: int) -> None:
        self.endpoint = endpoint
        self.remaining = times
        self.held = 0
        self._gate = asyncio.Event()

    def __repr__(self) -> str:
        return f"<SandboxHold {self.endpoint} held={self.held}>"

    @property
    def released(self) -> bool:
        return self._gate.is_set()

    def release(self) -> None:
        """Let every held answer, and any later one, go out."""
        self._gate.set()

    async def wait_released(self) -> None:
        await self._gate.wait()


class _ApiError(Exception):
    def __init__(self, code: int, msg: str | None = None, http_status: int | None = None) -> None:
        super().__init__(code, msg)
        self.code = code
        self.msg = msg if msg is not None else DEFAULT_MESSAGES.get(code, "error")
        self.http_status = http_status


class SandboxAPI:
    """The API stand-in; serve ``.app`` standalone or mount it with ``add_subapp``.

    ``task_seconds``: how long a task runs before it finishes by itself; ``None`` leaves every task
    running until ``complete()`` or ``fail()``. ``answer_delay``: seconds each POST waits before
    answering. ``api_key``: the only bearer accepted; ``None`` accepts any non-empty one.
    ``image_size``: side of each generated image; an upscale is ``upscale_factor`` times larger.
    ``vary_index_base``: 0 or 1, the first ``imageIndex`` generateVary accepts.
    ``video_cost``: what an SD video costs (HD three times, a batch that many times; an extension
    as one video); ``extend_index_base``: the first ``index`` generateVideoExtend accepts;
    ``video_seconds`` and ``extend_seconds``: a video's length and what an extension adds;
    ``video_bytes``: each video is padded to at least that many bytes (0: as made), so that a
    test can make one too large for a channel.
    ``callback_retry_delays``: pauses before each retry of a callback not answered with 200.
    ``webhook_hmac_key``: when set, callbacks are signed the way kie.ai signs them.
    ``callback_bases``: when given, a callBackUrl must lie under one of these URLs (same origin,
    path below theirs), else the call is refused with 422 and nothing is ever sent to it;
    ``None`` takes any http(s) URL, as the vendor does. The bot serving the sandbox on its own
    listener passes its callback route, so the sandbox cannot be made to post into the
    owner's network.
    """

    def __init__(
        self,
        *,
        task_seconds: float | None = 2.0,
        answer_delay: float = 0.0,
        api_key: str | None = None,
        credits: int = 1000,
        generation_cost: int = 8,
        upscale_cost: int = 2,
        vary_cost: int = 8,
        vary_index_base: int = 0,
        video_cost: int = 16,
        extend_index_base: int = 0,
        video_seconds: float = 5.0,
        extend_seconds: float = 4.0,
        video_bytes: int = 0,
        image_size: int = 256,
        upscale_factor: int = 2,
        errors_as_http_status: bool = True,
        callback_retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
        callback_timeout: float = 15.0,
        webhook_hmac_key: str | None = None,
        callback_bases: Collection[str] | None = None,
    ) -> None:
        if image_size < 1 or upscale_factor < 1:
            raise ValueError("image_size and upscale_factor must be positive")
        if isinstance(vary_index_base, bool) or vary_index_base not in (0, 1):
            raise ValueError("vary_index_base must be 0 or 1")
        if isinstance(extend_index_base, bool) or extend_index_base not in (0, 1):
            raise ValueError("extend_index_base must be 0 or 1")
        self.task_seconds = task_seconds
        self.answer_delay = answer_delay
        self.api_key = api_key
        self.credits = credits
        self.generation_cost = generation_cost
        self.upscale_cost = upscale_cost
        self.vary_cost = vary_cost
        self.vary_index_base = vary_index_base
        self.video_cost = video_cost
        self.extend_index_base = extend_index_base
        self.video_seconds = video_seconds
        self.extend_seconds = extend_seconds
        self.video_bytes = video_bytes
        self.image_size = image_size
        self.upscale_factor = upscale_factor
        self.errors_as_http_status = errors_as_http_status
        self.callback_retry_delays = tuple(callback_retry_delays)
        self.callback_timeout = callback_timeout
        self.webhook_hmac_key = webhook_hmac_key
        self.callback_bases = None if callback_bases is None else tuple(callback_bases)

        self.calls: list[SandboxCall] = []
        # The last input images fetched from generations' fileUrls, bounded: sandbox mode runs
        # inside the bot's process for as long as it does.
        self.fetched: deque[FetchedInput] = deque(maxlen=FETCHED_KEPT)
        self.callback_attempts: list[CallbackAttempt] = []
        self._tasks: dict[str, SandboxTask] = {}
        self._faults: dict[str, list[_ApiError]] = {}
        self._holds: list[SandboxHold] = []
        self._background = BackgroundTasks(log)
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._session: aiohttp.ClientSession | None = None
        self._png_cache: dict[tuple[str, int], bytes] = {}
        self._endpoints: dict[str, SandboxEndpoint] = {}

        self.app = web.Application()
        self.app.router.add_post("/api/v1/mj/generate", self._generate)
        self.app.router.add_post("/api/v1/mj/generateUpscale", self._generate_upscale)
        self.app.router.add_post("/api/v1/mj/generateVary", self._generate_vary)
        self.app.router.add_post("/api/v1/mj/generateVideoExtend", self._generate_video_extend)
        self.app.router.add_get("/api/v1/mj/record-info", self._record_info)
        self.app.router.add_get("/api/v1/chat/credit", self._credit)
        self.app.router.add_post("/api/v1/common/download-url", self._download_url)
        self.app.router.add_get("/files/{name}", self._file, name=_FILE_ROUTE)
        self.app.on_cleanup.append(self._on_cleanup)

    # ----- test controls -----------------------------------------------------------------------

    def add_endpoint(
        self,
        path: str,
        make_result: Callable[[SandboxTask, int], bytes],
        *,
        task_type: str | None = None,
        cost: int = 2,
        results: int = 1,
    ) -> str:
        """Serve one more task endpoint at ``path`` (``/api/v1/...``), before the sandbox is
        served (aiohttp freezes its routes then). Its POST takes a JSON object, with an optional
        ``taskId`` (a finished task it is made from, kept as its parent, and ``imageIndex``) and
        ``callBackUrl``; it charges ``cost`` and answers a task id. Its tasks run, finish, call
        back and answer record-info like the built-in ones, with ``results`` images, result
        ``index`` being ``make_result(task, index)``. Returns the endpoint's name (the last
        segment of ``path``), for ``count``, ``fail_next``, ``hold`` and ``wait_for_call``."""
        name = path.rsplit("/", 1)[-1]
        if name in ENDPOINTS or name in self._endpoints:
            raise ValueError(f"endpoint {name!r} exists already")
        endpoint = SandboxEndpoint(name, task_type or name, cost, results, make_result)
        self._endpoints[name] = endpoint

        async def handler(request: web.Request) -> web.Response:
            return await self._handle(request, name, functools.partial(self._do_added, endpoint))

        self.app.router.add_post(path, handler)
        return name

    def pixels(self, task_id: str, index: int) -> list[bytes]:
        """The RGB rows of a built-in task's result ``index`` (an added endpoint's result is
        made from these)."""
        task = self.task(task_id)
        if task.task_type == UPSCALE_TASK_TYPE:
            # Only _from_grid makes upscales, always from one image of a parent.
            assert task.parent_task_id is not None and task.image_index is not None
            parent = self._tasks.get(task.parent_task_id)
            return _scale(
                _render(
                    task.parent_task_id,
                    task.image_index,
                    self.image_size,
                    None if parent is None else parent.tint,
                ),
                self.upscale_factor,
            )
        return _render(task_id, index, self.image_size, task.tint)

    def fail_next(
        self, endpoint: Endpoint, code: int, msg: str | None = None, http_status: int | None = None
    ) -> None:
        """Make the next call of ``endpoint`` answer this error; queued calls apply in order.

        ``http_status`` overrides the status that ``errors_as_http_status`` would choose.
        """
        self._check_endpoint(endpoint)
        self._faults.setdefault(endpoint, []).append(_ApiError(code, msg, http_status))

    def hold(self, endpoint: Endpoint, times: int = 1) -> SandboxHold:
        """Keep back the answers of the next ``times`` successful calls of ``endpoint``.

        Each request is carried out first (a task is created and charged, a file is found), so a
        client that dies meanwhile has spent credits without learning the task id, or is stuck
        in a download. Errors, injected or not, are answered at once.
        """
        self._check_endpoint(endpoint)
        hold = SandboxHold(endpoint, times)
        self._holds.append(hold)
        return hold

    async def wait_held(self, hold: SandboxHold, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` answers were kept back by ``hold`` (TimeoutError otherwise)."""
        await self._wait_until(lambda: hold.held >= n, timeout)

    def complete(self, task_id: str) -> None:
        """Finish a running task now: success, or failure if its prompt asked for one."""
        task = self._running(task_id)
        if task.fail_message is not None:
            self._finish(task, FAILED, task.fail_message)
        else:
            self._finish(task, SUCCESS, None)

    def fail(
        self,
        task_id: str,
        message: str = "Image generation failed",
        *,
        success_flag: Literal[2, 3] = FAILED,
        error_code: int = 501,
    ) -> None:
        """Finish a running task now as failed (successFlag 2, or 3: created but failed)."""
        task = self._running(task_id)
        self._finish(task, success_flag, message, error_code)

    def add_generation(
        self, task_id: str | None = None, prompt: str = "a sandbox picture", **params: Any
    ) -> str:
        """Seed an already successful generation that no client started (of ``taskType``, from
        ``params``, mj_txt2img by default; its fileUrls are not fetched); returns its id."""
        params = {"taskType": "mj_txt2img", "prompt": prompt, "speed": "fast", **params}
        task = self._new_task(task_id or uuid.uuid4().hex, params["taskType"], params, origin=None)
        task.success_flag = SUCCESS
        task.completed_at = task.created_at
        log.info("sandbox: seeded generation %s", task.task_id)
        return task.task_id

    def resend_callback(self, task_id: str) -> None:
        """Deliver a finished task's callback once more, as the vendor may."""
        task = self.task(task_id)
        if task.success_flag == RUNNING or task.callback_url is None:
            raise ValueError(f"task {task_id} is running or has no callBackUrl")
        self._background.spawn(self._deliver_callback(task))

    # ----- observation -------------------------------------------------------------------------

    def task(self, task_id: str) -> SandboxTask:
        """The sandbox's record of a task; KeyError if unknown."""
        return self._tasks[task_id]

    def tasks(self) -> list[SandboxTask]:
        """Every task the sandbox knows, oldest first (a client may never have learnt an id)."""
        return list(self._tasks.values())

    def count(self, endpoint: Endpoint) -> int:
        return sum(1 for call in self.calls if call.endpoint == endpoint)

    # A default bound (rather than asyncio.timeout at each call site) keeps an awaited event that
    # never comes from hanging a test run.
    async def wait_for_call(
        self,
        endpoint: Endpoint,
        n: int = 1,
        timeout: float = 5.0,
    ) -> list[SandboxCall]:
        """Wait until ``endpoint`` was called ``n`` times (TimeoutError otherwise); its calls."""
        await self._wait_until(lambda: self.count(endpoint) >= n, timeout)
        return [call for call in self.calls if call.endpoint == endpoint]

    async def wait_for_callback(
        self,
        task_id: str | None = None,
        n: int = 1,
        timeout: float = 5.0,
    ) -> list[CallbackAttempt]:
        """Wait until ``n`` callback attempts were made (for one task, or any); those attempts."""

        def attempts() -> list[CallbackAttempt]:
            return [a for a in self.callback_attempts if task_id in (None, a.task_id)]

        await self._wait_until(lambda: len(attempts()) >= n, timeout)
        return attempts()

    def image_bytes(self, task_id: str, index: int) -> bytes:
        """The PNG a task's result ``index`` is served as; an upscale scales its parent's image.

        A variation has four images of its own, named after the parent's image it varies.
        """
        task = self.task(task_id)
        if not 0 <= index < task.result_count:
            raise IndexError(f"task {task_id} has {task.result_count} result(s), not {index + 1}")
        key = (task_id, index)
        if key not in self._png_cache:
            if task.endpoint is not None:
                self._png_cache[key] = task.endpoint.make_result(task, index)
                return self._png_cache[key]
            if task.task_type == UPSCALE_TASK_TYPE:
                source = f"upscale {task_id} of {task.parent_task_id} image {task.image_index}"
            elif task.task_type == VARY_TASK_TYPE:
                source = f"variation {task_id} of {task.parent_task_id} image {task.image_index}"
            else:
                source = f"generation {task_id} image {index}"
            rows = self.pixels(task_id, index)
            self._png_cache[key] = encode_png(rows, {"Source": f"mj sandbox {source}"})
        return self._png_cache[key]

    def video_bytes_of(self, task_id: str, index: int) -> bytes:
        """The MP4 a video task's result ``index`` is served as: a real, playable video as long
        as the task's (an extension's is longer), padded to ``video_bytes``."""
        task = self.task(task_id)
        if not task.is_video or not 0 <= index < task.result_count:
            raise IndexError(f"task {task_id} has no video {index + 1}")
        seconds = self.video_seconds + self.extend_seconds * task.extensions
        width, height = (384, 216) if task.hd else (256, 144)
        return make_mp4(
            seconds, f"{task_id}:{index}", width=width, height=height, pad_to=self.video_bytes
        )

    async def close(self) -> None:
        """Cancel pending task timers and callback deliveries; close the callback session."""
        # A held handler would keep the server's shutdown waiting for its answer.
        for hold in self._holds:
            hold.release()
        await self._background.close()
        for task in self._tasks.values():
            task.timer = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----- HTTP handlers -----------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.Response:
        return await self._handle(request, "generate", self._do_generate)

    async def _generate_upscale(self, request: web.Request) -> web.Response:
        return await self._handle(request, "generateUpscale", self._do_upscale)

    async def _generate_vary(self, request: web.Request) -> web.Response:
        return await self._handle(request, "generateVary", self._do_vary)

    async def _generate_video_extend(self, request: web.Request) -> web.Response:
        return await self._handle(request, "generateVideoExtend", self._do_video_extend)

    async def _record_info(self, request: web.Request) -> web.Response:
        return await self._handle(request, "record-info", self._do_record_info)

    async def _credit(self, request: web.Request) -> web.Response:
        return await self._handle(request, "credit", self._do_credit)

    async def _download_url(self, request: web.Request) -> web.Response:
        return await self._handle(request, "download-url", self._do_download_url)

    async def _file(self, request: web.Request) -> web.Response:
        # Result files are public on the vendor's hosts too: no auth, no envelope on success.
        name = request.match_info["name"]
        try:
            self._take_fault("files")
            task_id, index = self._parse_file_name(name)
            task = self._tasks.get(task_id)
            if (
                task is None
                or task.success_flag != SUCCESS
                or index >= task.result_count
                or name.endswith(".mp4") != task.is_video
            ):
                raise _ApiError(404, f"no such file: {name}")
        except _ApiError as error:
            # Anyone can ask for files on the bot's public listener: guesses fill neither the
            # record of calls nor the log.
            return self._error_response("files", error, level=logging.DEBUG)
        self._record("files", name)
        await self._hold_answer("files")
        if task.is_video:
            # Made by ffmpeg in a child process: the loop the bot shares in sandbox mode waits.
            video = await asyncio.to_thread(self.video_bytes_of, task_id, index)
            return web.Response(body=video, content_type="video/mp4")
        body = self.image_bytes(task_id, index)
        # Served as what the bytes are: a subclass may serve JPEG results (bench.jobcost).
        content_type = "image/jpeg" if body.startswith(b"\xff\xd8\xff") else "image/png"
        return web.Response(body=body, content_type=content_type)

    async def _handle(
        self,
        request: web.Request,
        endpoint: str,
        operation: Callable[[web.Request, Any], Awaitable[Any]],
    ) -> web.Response:
        # Before the body is read or the call recorded, and logged at debug level only: on the
        # bot's public listener anyone can send requests, and those without the key must fill
        # neither memory nor the log.
        try:
            self._authenticate(request)
        except _ApiError as error:
            return self._error_response(endpoint, error, level=logging.DEBUG)
        if request.method == "POST":
            raw = await request.text()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
        else:
            body = dict(request.query)
        self._record(endpoint, body)
        if request.method == "POST" and self.answer_delay > 0:
            await asyncio.sleep(self.answer_delay)
        try:
            self._take_fault(endpoint)
            data = await operation(request, body)
        except _ApiError as error:
            return self._error_response(endpoint, error)
        await self._hold_answer(endpoint)
        return web.json_response({"code": 200, "msg": "success", "data": data})

    async def _do_generate(self, request: web.Request, body: Any) -> dict[str, str]:
        params = _require_object(body)
        task_type = params.get("taskType")
        if not _is_one_of(task_type, TASK_TYPES):
            raise _ApiError(422, f"taskType must be one of {sorted(TASK_TYPES)}")
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _ApiError(422, "prompt is required")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _ApiError(422, f"prompt must be at most {MAX_PROMPT_CHARS} characters")
        for name, allowed in (
            ("speed", SPEEDS),
            ("aspectRatio", ASPECT_RATIOS),
            ("version", VERSIONS),
        ):
            if name in params and not _is_one_of(params[name], allowed):
                raise _ApiError(422, f"{name} must be one of {sorted(allowed)}")
        for name, (low, high) in INT_RANGES.items():
            if name in params and not _is_int_in(params[name], low, high):
                raise _ApiError(422, f"{name} must be an integer from {low} to {high}")
        if "variety" in params and params["variety"] % 5:
            raise _ApiError(422, "variety must be a multiple of 5")
        file_urls = params.get("fileUrls", [])
        if not isinstance(file_urls, list) or not all(isinstance(u, str) for u in file_urls):
            raise _ApiError(422, "fileUrls must be a list of URLs")
        cost = self.generation_cost
        if task_type in VIDEO_TASK_TYPES:
            cost = self._video_cost(params, file_urls, hd=task_type == HD_VIDEO_TASK_TYPE)
        if not isinstance(params.get("enableTranslation", False), bool):
            raise _ApiError(422, "enableTranslation must be a boolean")
        if "ow" in params and (
            task_type != OMNI_TASK_TYPE or not _is_int_in(params["ow"], 1, 1000)
        ):
            raise _ApiError(422, "ow must be an integer from 1 to 1000, with mj_omni_reference")
        _check_optional_string(params, "waterMark")
        callback_url = self._check_callback_url(params)
        tint = None
        if task_type in IMAGE_TASK_TYPES or task_type in VIDEO_TASK_TYPES:
            if not file_urls or len(file_urls) > MAX_FILE_URLS:
                raise _ApiError(422, f"fileUrls must hold 1 to {MAX_FILE_URLS} images")
            inputs = [await self._fetch_input(url) for url in file_urls]
            # Decoding takes long enough to stall the bot's loop it shares in sandbox mode.
            tint = await asyncio.to_thread(_mean_colour, inputs)
        self._charge(cost)
        task = self._new_task(
            uuid.uuid4().hex,
            task_type,
            params,
            origin=request.url.origin(),
            callback_url=callback_url,
        )
        task.tint = tint
        task.hd = task_type == HD_VIDEO_TASK_TYPE
        if FAIL_MARKER in prompt:
            task.fail_message = "Image generation failed: the prompt asked the sandbox to fail"
        self._start(task)
        return {"taskId": task.task_id}

    def _video_cost(self, params: dict[str, Any], file_urls: list[str], *, hd: bool) -> int:
        """What a video of ``params`` costs, once they are checked as the vendor documents."""
        if len(file_urls) != 1:
            raise _ApiError(422, "fileUrls must hold exactly one image for a video")
        if not _is_one_of(params.get("motion"), MOTIONS):
            raise _ApiError(422, f"motion must be one of {sorted(MOTIONS)}")
        batch = params.get("videoBatchSize", 1)
        if not _is_int_in(batch, 1, 4) or batch not in VIDEO_BATCH_SIZES:
            raise _ApiError(422, "videoBatchSize must be 1, 2 or 4")
        return self.video_cost * batch * (HD_TIMES if hd else 1)

    async def _do_video_extend(self, request: web.Request, body: Any) -> dict[str, str]:
        """A video made longer: one video of a finished video task's batch, extended."""
        params = _require_object(body)
        parent_id = params.get("taskId")
        if not isinstance(parent_id, str) or not parent_id:
            raise _ApiError(422, "taskId is required")
        task_type = params.get("taskType")
        if not _is_one_of(task_type, EXTEND_TASK_TYPES):
            raise _ApiError(422, f"taskType must be one of {sorted(EXTEND_TASK_TYPES)}")
        prompt = params.get("prompt")
        if task_type == "mj_video_extend_manual" and (
            not isinstance(prompt, str) or not prompt.strip()
        ):
            raise _ApiError(422, "prompt is required with mj_video_extend_manual")
        _check_optional_string(params, "waterMark")
        callback_url = self._check_callback_url(params)
        parent = self._tasks.get(parent_id)
        if parent is None:
            raise _ApiError(404, f"task {parent_id} not found")
        if not parent.is_video:
            raise _ApiError(422, f"task {parent_id} is not a video task")
        if parent.success_flag != SUCCESS:
            raise _ApiError(422, f"task {parent_id} did not succeed")
        first = self.extend_index_base
        last = first + parent.result_count - 1
        index = params.get("index")
        if not _is_int_in(index, first, last):
            raise _ApiError(422, f"index must be an integer from {first} to {last}")
        if parent.extensions >= MAX_EXTENSIONS:
            raise _ApiError(422, f"the video was extended {MAX_EXTENSIONS} times: no more")
        self._charge(self.video_cost * (HD_TIMES if parent.hd else 1))
        inherited: dict[str, Any] = {
            k: parent.params[k] for k in ("prompt", "motion") if k in parent.params
        }
        task = self._new_task(
            uuid.uuid4().hex,
            task_type,
            {**inherited, **params},
            origin=request.url.origin(),
            callback_url=callback_url,
            parent_task_id=parent_id,
            image_index=index - first,
        )
        task.extensions = parent.extensions + 1
        task.hd = parent.hd
        self._start(task)
        return {"taskId": task.task_id}

    async def _fetch_input(self, url: str) -> bytes:
        """An input image, fetched as the vendor would before taking the task: one that cannot
        be fetched or read is a 422 naming fileUrls (never the URL: it may carry a token)."""
        if _http_url(url) is None:
            raise _ApiError(422, "fileUrls must be http(s) URLs")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=INPUT_FETCH_SECONDS),
            ) as response:
                data = await response.content.read(MAX_INPUT_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            raise _ApiError(422, "fileUrls: an image could not be fetched") from None
        if status != 200 or len(data) > MAX_INPUT_BYTES:
            raise _ApiError(422, f"fileUrls: an image could not be fetched (HTTP {status})")
        self.fetched.append(FetchedInput(url, hashlib.sha256(data).hexdigest(), len(data)))
        self._notify()
        return data

    async def _do_upscale(self, request: web.Request, body: Any) -> dict[str, str]:
        return self._from_grid(
            request, body, UPSCALE_TASK_TYPE, first_index=0, cost=self.upscale_cost, inherit=()
        )

    async def _do_vary(self, request: web.Request, body: Any) -> dict[str, str]:
        return self._from_grid(
            request,
            body,
            VARY_TASK_TYPE,
            first_index=self.vary_index_base,
            cost=self.vary_cost,
            inherit=VARY_INHERITED_PARAMS,
        )

    def _from_grid(
        self,
        request: web.Request,
        body: Any,
        task_type: str,
        *,
        first_index: int,
        cost: int,
        inherit: Sequence[str],
    ) -> dict[str, str]:
        """A task made from one image of a finished grid: an upscale or a variation."""
        params = _require_object(body)
        parent_id = params.get("taskId")
        if not isinstance(parent_id, str) or not parent_id:
            raise _ApiError(422, "taskId is required")
        index = params.get("imageIndex")
        last_index = first_index + GRID_SIZE - 1
        if not _is_int_in(index, first_index, last_index):
            raise _ApiError(
                422, f"imageIndex must be an integer from {first_index} to {last_index}"
            )
        _check_optional_string(params, "waterMark")
        callback_url = self._check_callback_url(params)
        parent = self._tasks.get(parent_id)
        if parent is None:
            raise _ApiError(404, f"task {parent_id} not found")
        if parent.task_type == UPSCALE_TASK_TYPE or parent.is_video:
            raise _ApiError(422, f"task {parent_id} is not a generation task")
        if parent.success_flag == RUNNING:
            raise _ApiError(422, f"task {parent_id} is still generating")
        if parent.success_flag != SUCCESS:
            raise _ApiError(422, f"task {parent_id} did not succeed")
        self._charge(cost)
        # A new dict: the body is also what self.calls recorded as received.
        params = {
            **params,
            **{name: parent.params[name] for name in inherit if name in parent.params},
        }
        task = self._new_task(
            uuid.uuid4().hex,
            task_type,
            params,
            origin=request.url.origin(),
            callback_url=callback_url,
            parent_task_id=parent_id,
            image_index=index - first_index,
        )
        self._start(task)
        return {"taskId": task.task_id}

    async def _do_added(
        self, endpoint: SandboxEndpoint, request: web.Request, body: Any
    ) -> dict[str, str]:
        """A task of an endpoint added from outside, made from a finished task or from nothing."""
        params = _require_object(body)
        parent_id = params.get("taskId")
        index = params.get("imageIndex")
        if parent_id is not None:
            if not isinstance(parent_id, str) or not parent_id:
                raise _ApiError(422, "taskId must be a task id")
            parent = self._tasks.get(parent_id)
            if parent is None:
                raise _ApiError(404, f"task {parent_id} not found")
            if parent.success_flag != SUCCESS:
                raise _ApiError(422, f"task {parent_id} did not succeed")
        if index is not None and not _is_int_in(index, 0, GRID_SIZE - 1):
            raise _ApiError(422, f"imageIndex must be an integer from 0 to {GRID_SIZE - 1}")
        _check_optional_string(params, "waterMark")
        callback_url = self._check_callback_url(params)
        self._charge(endpoint.cost)
        task = self._new_task(
            uuid.uuid4().hex,
            endpoint.task_type,
            dict(params),
            origin=request.url.origin(),
            callback_url=callback_url,
            parent_task_id=parent_id,
            image_index=index,
        )
        task.endpoint = endpoint
        self._start(task)
        return {"taskId": task.task_id}

    async def _do_record_info(self, request: web.Request, query: Any) -> dict[str, Any]:
        task_id = query.get("taskId")
        if not task_id:
            raise _ApiError(422, "taskId is required")
        task = self._tasks.get(task_id)
        if task is None:
            raise _ApiError(404, f"task {task_id} not found")
        result_info = None
        if task.success_flag == SUCCESS:
            urls = self._result_urls(task, request.url.origin())
            result_info = {"resultUrls": [{"resultUrl": url} for url in urls]}
        return {
            "taskId": task.task_id,
            "taskType": task.task_type,
            "paramJson": json.dumps(task.params),
            "createTime": _format_time(task.created_at, task.epoch_millis),
            "completeTime": _format_time(task.completed_at, task.epoch_millis),
            "resultInfoJson": result_info,
            "successFlag": task.success_flag,
            "errorCode": task.error_code,
            "errorMessage": task.error_message,
        }

    async def _do_credit(self, request: web.Request, query: Any) -> int:
        return self.credits

    async def _do_download_url(self, request: web.Request, body: Any) -> str:
        url = _require_object(body).get("url")
        if not isinstance(url, str) or not url:
            raise _ApiError(422, "url is required")
        return url

    # ----- internals ---------------------------------------------------------------------------

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint not in ENDPOINTS and endpoint not in self._endpoints:
            known = sorted((*ENDPOINTS, *self._endpoints))
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {known}")

    def _record(self, endpoint: str, body: Any) -> None:
        self.calls.append(SandboxCall(endpoint, body, time.time()))
        log.debug("sandbox: %s called", endpoint)
        self._notify()

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _ApiError(401, "missing bearer token")
        # As bytes: compare_digest raises TypeError on a str that is not ASCII, which anyone
        # could send.
        if self.api_key is not None and not hmac.compare_digest(
            token.encode(), self.api_key.encode()
        ):
            raise _ApiError(401, "invalid API key")

    def _check_callback_url(self, params: dict[str, Any]) -> str | None:
        value = params.get("callBackUrl")
        if value is None:
            return None
        url = _http_url(value)
        if url is None:
            raise _ApiError(422, "callBackUrl must be an http(s) URL")
        if self.callback_bases is not None and not any(
            _is_under(url, URL(base)) for base in self.callback_bases
        ):
            raise _ApiError(422, "callBackUrl must point at this bot's listener")
        return str(value)

    def _take_fault(self, endpoint: str) -> None:
        queued = self._faults.get(endpoint)
        if queued:
            error = queued.pop(0)
            log.info("sandbox: injected error %d on %s", error.code, endpoint)
            raise error

    async def _hold_answer(self, endpoint: str) -> None:
        hold = next((h for h in self._holds if h.endpoint == endpoint and h.remaining > 0), None)
        if hold is None:
            return
        hold.remaining -= 1
        hold.held += 1
        log.info("sandbox: answer of %s held", endpoint)
        self._notify()
        await hold.wait_released()

    def _error_response(
        self, endpoint: str, error: _ApiError, *, level: int = logging.INFO
    ) -> web.Response:
        status = error.http_status
        if status is None:
            status = error.code if self.errors_as_http_status else 200
        # %r because msg may echo request values, which must not forge log lines.
        log.log(
            level,
            "sandbox: %s answered code %d (HTTP %d): %r",
            endpoint,
            error.code,
            status,
            error.msg,
        )
        # Codes such as 455 have no standard reason phrase; a constant one keeps the status line
        # valid without echoing request values into it.
        reason = None if _is_standard_status(status) else DEFAULT_MESSAGES.get(status, "Error")
        return web.json_response(
            {"code": error.code, "msg": error.msg, "data": None}, status=status, reason=reason
        )

    def _charge(self, cost: int) -> None:
        if self.credits < cost:
            raise _ApiError(402, "insufficient credits")
        self.credits -= cost

    def _new_task(
        self,
        task_id: str,
        task_type: str,
        params: dict[str, Any],
        *,
        origin: URL | None,
        callback_url: str | None = None,
        parent_task_id: str | None = None,
        image_index: int | None = None,
    ) -> SandboxTask:
        if task_id in self._tasks:
            raise ValueError(f"task {task_id} already exists")
        task = SandboxTask(
            task_id=task_id,
            task_type=task_type,
            params=params,
            created_at=datetime.now(UTC),
            epoch_millis=len(self._tasks) % 2 == 1,
            parent_task_id=parent_task_id,
            image_index=image_index,
            callback_url=callback_url,
            origin=origin,
        )
        self._tasks[task_id] = task
        return task

    def _start(self, task: SandboxTask) -> None:
        log.info("sandbox: task %s (%s) created", task.task_id, task.task_type)
        if self.task_seconds is not None:
            task.timer = self._background.spawn(self._finish_later(task, self.task_seconds))

    async def _finish_later(self, task: SandboxTask, seconds: float) -> None:
        await asyncio.sleep(seconds)
        # Cleared first so that _finish does not cancel the very task running it.
        task.timer = None
        self.complete(task.task_id)

    def _running(self, task_id: str) -> SandboxTask:
        task = self.task(task_id)
        if task.success_flag != RUNNING:
            raise ValueError(f"task {task_id} already finished (successFlag {task.success_flag})")
        return task

    def _finish(
        self, task: SandboxTask, flag: int, message: str | None, error_code: int = 501
    ) -> None:
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        task.success_flag = flag
        task.completed_at = datetime.now(UTC)
        if flag != SUCCESS:
            task.error_code = error_code
            task.error_message = message
        log.info("sandbox: task %s finished with successFlag %d", task.task_id, flag)
        if task.callback_url is not None:
            self._background.spawn(self._deliver_callback(task))

    def _callback_payload(self, task: SandboxTask) -> dict[str, Any]:
        if task.success_flag == SUCCESS:
            # Only tasks created over HTTP can carry a callBackUrl, so the origin is known.
            assert task.origin is not None
            return {
                "code": 200,
                "msg": "success",
                "data": {
                    "taskId": task.task_id,
                    "promptJson": json.dumps(task.params),
                    "resultUrls": self._result_urls(task, task.origin),
                },
            }
        return {
            "code": 500,
            "msg": "Image generation failed",
            "data": {"taskId": task.task_id, "resultUrls": []},
        }

    async def _deliver_callback(self, task: SandboxTask) -> None:
        assert task.callback_url is not None
        payload = self._callback_payload(task)
        delays = (0.0, *self.callback_retry_delays)
        for attempt, delay in enumerate(delays, start=1):
            if delay:
                await asyncio.sleep(delay)
            status, error = await self._post_callback(task, payload)
            self.callback_attempts.append(
                CallbackAttempt(task.task_id, task.callback_url, attempt, payload, status, error)
            )
            log.info(
                "sandbox: callback %d for task %s answered %s",
                attempt,
                task.task_id,
                status if status is not None else error,
            )
            self._notify()
            if status == 200:
                return
        log.warning("sandbox: gave up calling back task %s", task.task_id)

    async def _post_callback(
        self, task: SandboxTask, payload: dict[str, Any]
    ) -> tuple[int | None, str | None]:
        assert task.callback_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers: dict[str, str] = {}
        if self.webhook_hmac_key is not None:
            timestamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = webhook_signature(
                self.webhook_hmac_key, task.task_id, timestamp
            )
        try:
            async with self._session.post(
                task.callback_url,
                json=payload,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.callback_timeout),
            ) as response:
                await response.read()
                return response.status, None
        except (aiohttp.ClientError, TimeoutError) as error:
            return None, f"{type(error).__name__}: {error}"

    def _result_urls(self, task: SandboxTask, origin: URL) -> list[str]:
        route = self.app.router[_FILE_ROUTE]
        extension = "mp4" if task.is_video else "png"
        return [
            str(origin.join(route.url_for(name=f"{task.task_id}_0_{index}.{extension}")))
            for index in range(task.result_count)
        ]

    @staticmethod
    def _parse_file_name(name: str) -> tuple[str, int]:
        stem, dot, extension = name.rpartition(".")
        task_id, _, index = stem.rpartition("_0_")
        if not dot or extension not in ("png", "mp4") or not task_id or not index.isdigit():
            raise _ApiError(404, f"no such file: {name}")
        return task_id, int(index)

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    async def _wait_until(self, predicate: Callable[[], bool], limit: float) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(limit):
                await future
        finally:
            self._waiters.remove(entry)

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.close()


def encode_png(rows: Sequence[bytes], text: dict[str, str] | None = None) -> bytes:
    """An 8-bit RGB PNG of ``rows`` (each ``3 * width`` bytes), with optional tEXt chunks."""
    height = len(rows)
    width = len(rows[0]) // 3 if rows else 0
    if width == 0 or any(len(row) != 3 * width for row in rows):
        raise ValueError("rows must be non-empty and all 3 * width bytes long")
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for keyword, value in (text or {}).items():
        chunks.append(_png_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + value.encode()))
    # Filter type 0 on every row: the images are flat blocks that compress well regardless.
    raw = b"".join(b"\0" + row for row in rows)
    chunks.append(_png_chunk(b"IDAT", zlib.compress(raw, 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return _PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _render(task_id: str, index: int, size: int, tint: bytes | None = None) -> list[bytes]:
    """A deterministic 8x8 checkerboard per (task, index), its own quadrant drawn inverted.

    The inverted quadrant sits where ``index`` sits in the Midjourney 2x2 grid, so a person looking
    at an upscale can tell which of the four it came from. A task made from images has its light
    squares in their mean colour (``tint``), so a test can tell its grid depends on them.
    """
    digest = hashlib.sha256(f"{task_id}:{index}".encode()).digest()
    light, dark = tint or digest[0:3], digest[3:6]
    colours = {
        (False, False): light,
        (False, True): dark,
        (True, False): bytes(255 - c for c in light),
        (True, True): bytes(255 - c for c in dark),
    }
    bounds = [cell * size // 8 for cell in range(9)]
    marked_column, marked_row = index % 2, index // 2
    rows: list[bytes] = []
    for cell_y in range(8):
        row = b"".join(
            colours[
                (cell_x // 4 == marked_column and cell_y // 4 == marked_row),
                (cell_x + cell_y) % 2 == 1,
            ]
            * (bounds[cell_x + 1] - bounds[cell_x])
            for cell_x in range(8)
        )
        rows.extend([row] * (bounds[cell_y + 1] - bounds[cell_y]))
    return rows


def _mean_colour(images: Sequence[bytes]) -> bytes:
    """The mean RGB colour of the images (a 422 naming fileUrls for one that is no image), from
    their first frame, decoded small where the format allows (in a thread: it takes time)."""
    totals = [0, 0, 0]
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.seek(0)
                # A JPEG is decoded at up to 1/8 of its size; others whole, then reduced.
                image.draft("RGB", (MEAN_SIDE, MEAN_SIDE))
                rgb = image.convert("RGB")
                small = rgb.reduce(max(1, min(rgb.size) // MEAN_SIDE))
                pixel = small.resize((1, 1)).getpixel((0, 0))
        except (OSError, ValueError, Image.DecompressionBombError):
            raise _ApiError(422, "fileUrls: a file is not an image") from None
        assert isinstance(pixel, tuple)
        for channel in range(3):
            totals[channel] += int(pixel[channel])
    return bytes(total // len(images) for total in totals)


def _scale(rows: Iterable[bytes], factor: int) -> list[bytes]:
    """Nearest-neighbour enlargement, so each source pixel becomes a factor x factor block."""
    scaled: list[bytes] = []
    for row in rows:
        wide = b"".join(row[i : i + 3] * factor for i in range(0, len(row), 3))
        scaled.extend([wide] * factor)
    return scaled


def _is_standard_status(status: int) -> bool:
    try:
        HTTPStatus(status)
    except ValueError:
        return False
    return True


def _format_time(moment: datetime | None, epoch_millis: bool) -> str | int | None:
    if moment is None:
        return None
    if epoch_millis:
        return int(moment.timestamp() * 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _ApiError(400, "request body must be a JSON object")
    return body


def _is_one_of(value: object, allowed: frozenset[str]) -> TypeGuard[str]:
    # A JSON list or object is unhashable: it must be rejected, not crash the membership test.
    return isinstance(value, str) and value in allowed


def _is_int_in(value: object, low: int, high: int) -> TypeGuard[int]:
    # bool is an int subclass in Python, but JSON true is not a valid index.
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_optional_string(params: dict[str, Any], name: str) -> None:
    if name in params and not isinstance(params[name], str):
        raise _ApiError(422, f"{name} must be a string")


def _http_url(value: object) -> URL | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            url = URL(value)
            if url.scheme in ("http", "https") and url.host:
                return url
    return None


def _is_under(url: URL, base: URL) -> bool:
    # yarl has already resolved dot segments, so a path under the base's stays under it.
    prefix = base.path if base.path.endswith("/") else base.path + "/"
    return url.origin() == base.origin() and url.path.startswith(prefix)
