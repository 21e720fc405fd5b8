"""Typed async calls to the Midjourney API (midapi.ai / kie.ai): models in, models or errors out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from bot.metrics import Metrics, recorder
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.midjourney.models import GRID_SIZE, MalformedAnswer, Task, is_task_id, parse_record_info
from bot.net import read_capped

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1024 * 1024
VIDEO_MOTIONS = ("low", "high")
VIDEO_BATCHES = (1, 2, 4)


class MidjourneyClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._session = session
        # Told of every refusal (an ApiError about to be raised), whichever call met it: the
        # low-credit watch learns of a 402 this way without this package knowing of it.
        self.on_refusal: Callable[[ApiError], None] | None = None
        self._metrics = recorder(metrics)
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        # Connecting gets part of the budget only: a stalled connect is told apart (nothing sent).
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout / 2))

    @property
    def base_url(self) -> str:
        return self._base

    async def generate(
        self,
        prompt: str,
        *,
        task_type: str = "mj_txt2img",
        speed: str = "fast",
        aspect_ratio: str | None = None,
        version: str | None = None,
        omni_strength: int | None = None,
        file_urls: Sequence[str] = (),
        stylization: int | None = None,
        variety: int | None = None,
        weirdness: int | None = None,
        translate: bool = False,
        callback_url: str | None = None,
    ) -> str:
        body: dict[str, Any] = {"taskType": task_type, "prompt": prompt, "speed": speed}
        if aspect_ratio:
            body["aspectRatio"] = aspect_ratio
        if version:
            body["version"] = version
        if omni_strength is not None:
            body["ow"] = omni_strength
        if file_urls:
            body["fileUrls"] = list(file_urls)
        for name, number in (
            ("stylization", stylization),
            ("variety", variety),
            ("weirdness", weirdness),
        ):
            if number is not None:
                body[name] = number
        if translate:
            body["enableTranslation"] = True
        if callback_url:
            body["callBackUrl"] = callback_url
        return await self.submit("/api/v1/mj/generate", body)

    async def upscale(
        self,
        task_id: str,
        image_index: int,
        *,
        watermark: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        return await self._from_grid(
            "/api/v1/mj/generateUpscale",
            task_id,
            image_index,
            range(GRID_SIZE),
            watermark,
            callback_url,
        )

    async def vary(
        self,
        task_id: str,
        image_index: int,
        *,
        watermark: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Four variations of one image of a grid; ``image_index`` is sent exactly as given.

        The vendors document vary's imageIndex both as 0-3 and as 1-4, so the caller picks the
        base and this accepts the union of both ranges.
        """
        return await self._from_grid(
            "/api/v1/mj/generateVary",
            task_id,
            image_index,
            range(GRID_SIZE + 1),
            watermark,
            callback_url,
        )

    async def video(
        self,
        image_url: str,
        *,
        prompt: str,
        motion: str,
        hd: bool = False,
        batch: int = 1,
        watermark: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Short videos (``batch`` of them) animating the image at ``image_url``."""
        if motion not in VIDEO_MOTIONS or batch not in VIDEO_BATCHES or not prompt:
            raise ValueError(
                f"a video needs a prompt, a motion of {VIDEO_MOTIONS}, a batch of {VIDEO_BATCHES}"
            )
        body: dict[str, Any] = {
            "taskType": "mj_video_hd" if hd else "mj_video",
            "prompt": prompt,
            "fileUrls": [image_url],
            "motion": motion,
            "videoBatchSize": batch,
        }
        if watermark:
            body["waterMark"] = watermark
        if callback_url:
            body["callBackUrl"] = callback_url
        return await self.submit("/api/v1/mj/generate", body)

    async def extend_video(
        self,
        task_id: str,
        index: int,
        *,
        watermark: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """The video ``index`` of the video task ``task_id``, extended by Midjourney's own
        continuation (``mj_video_extend_auto``); ``index`` is sent exactly as given, 0–4 (its
        base is the caller's, as vary's)."""
        if not is_task_id(task_id) or type(index) is not int or index not in range(GRID_SIZE + 1):
            raise ValueError(
                f"generateVideoExtend needs a valid task id and an index from 0 to {GRID_SIZE}"
            )
        body: dict[str, Any] = {
            "taskId": task_id,
            "index": index,
            "taskType": "mj_video_extend_auto",
        }
        if watermark:
            body["waterMark"] = watermark
        if callback_url:
            body["callBackUrl"] = callback_url
        return await self.submit("/api/v1/mj/generateVideoExtend", body)

    async def record_info(self, task_id: str) -> Task:
        data = await self._call("GET", "/api/v1/mj/record-info", params={"taskId": task_id})
        try:
            task = parse_record_info(data)
        except MalformedAnswer as exc:
            raise ApiUnreachable(
                f"record-info answer is malformed: {exc}", maybe_done=True
            ) from exc
        if task.task_id != task_id:
            raise ApiUnreachable("record-info answered about another task", maybe_done=True)
        return task

    async def credits(self) -> int:
        data = await self._call("GET", "/api/v1/chat/credit")
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ApiUnreachable("credit answer is not a number", maybe_done=True)
        return int(data)

    async def _from_grid(
        self,
        path: str,
        task_id: str,
        image_index: int,
        indexes: range,
        watermark: str | None,
        callback_url: str | None,
    ) -> str:
        # bool is an int subclass, but True is no image index.
        if not is_task_id(task_id) or type(image_index) is not int or image_index not in indexes:
            raise ValueError(
                f"{path.rsplit('/', 1)[-1]} needs a valid task id and an image index from "
                f"{indexes.start} to {indexes.stop - 1}"
            )
        body: dict[str, Any] = {"taskId": task_id, "imageIndex": image_index}
        if watermark:
            body["waterMark"] = watermark
        if callback_url:
            body["callBackUrl"] = callback_url
        return await self.submit(path, body)

    async def submit(self, path: str, body: dict[str, Any]) -> str:
        """The paid call every task endpoint shares: POST ``body`` to ``path`` (under the base
        URL) and return the task id of the answer. A kind whose endpoint has no method here
        calls it through this; errors are those of every call (``ApiError``, ``ApiUnreachable``
        with ``maybe_done``)."""
        return self._task_id(await self._call("POST", path, body=body))

    @staticmethod
    def _task_id(data: object) -> str:
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not is_task_id(task_id):
            # The call was accepted (code 200) yet names no task: it may have been charged.
            raise ApiUnreachable(
                "the API accepted the task but returned no taskId", maybe_done=True
            )
        return task_id

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> object:
        url = self._base + path
        endpoint, started = path.rsplit("/", 1)[-1], time.monotonic()

        def record(code: int | str) -> None:
            self._metrics.upstream_call(endpoint, code, time.monotonic() - started)

        try:
            async with self._session.request(
                method, url, json=body, params=params, headers=self._headers, timeout=self._timeout
            ) as response:
                raw = await read_capped(response, MAX_ANSWER_BYTES)
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            record("unreachable")
            raise ApiUnreachable(
                f"{path}: cannot connect ({exc.os_error})", maybe_done=False
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            # No connection was made, so the request was never sent.
            record("unreachable")
            raise ApiUnreachable(f"{path}: connecting timed out", maybe_done=False) from exc
        except TimeoutError as exc:
            record("timeout")
            raise ApiUnreachable(f"{path}: no answer in time", maybe_done=True) from exc
        except aiohttp.ClientError as exc:
            record("error")
            raise ApiUnreachable(f"{path}: {type(exc).__name__}", maybe_done=True) from exc

        envelope = _envelope(raw)
        if envelope is None:
            # No vendor code to count: the HTTP status, or "malformed" when that said success.
            record(status if status >= 400 else "malformed")
            log.warning("api %s %s answered HTTP %s without a JSON envelope", method, path, status)
            if status in (401, 402, 404, 422, 429, 455, 501, 505):
                raise self._refused(ApiError(status))
            raise ApiUnreachable(f"{path}: HTTP {status} without a JSON answer", maybe_done=True)
        code, msg, data = envelope
        record(code if code != 200 or status < 400 else status)
        if code != 200 or status >= 400:
            error = ApiError(code if code != 200 else status, msg)
            log.info(
                "api %s %s refused: code=%s http=%s msg=%s", method, path, code, status, error.msg
            )
            raise self._refused(error)
        return data

    def _refused(self, error: ApiError) -> ApiError:
        if self.on_refusal is not None:
            try:
                self.on_refusal(error)
            except Exception:
                # An observer's bug must not turn a plain refusal into a crash of the caller.
                log.exception("the refusal observer failed on %s", error)
        return error


def _envelope(raw: bytes | None) -> tuple[int, str, object] | None:
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    code = parsed.get("code")
    if isinstance(code, str) and code.isdecimal() and code.isascii():
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    msg = parsed.get("msg")
    return code, msg if isinstance(msg, str) else "", parsed.get("data")
