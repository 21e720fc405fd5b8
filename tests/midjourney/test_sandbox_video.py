"""The sandbox's videos over real loopback HTTP: mj_video / mj_video_hd from one upscaled image,
generateVideoExtend up to four times, real MP4 files, their costs and their refusals."""

from __future__ import annotations

from typing import Any

import pytest

from bot.delivery.video import mp4_duration, video_kind
from tests.midjourney.test_sandbox import GENERATE, Harness, Start, stack, start

# The sandbox fixtures of test_sandbox, used here too.
__all__ = ["stack", "start"]

EXTEND = "api/v1/mj/generateVideoExtend"


async def upscaled(h: Harness) -> tuple[str, str]:
    """A finished upscale's task id and its image's URL."""
    grid = await h.generate("a fox in the snow")
    h.sandbox.complete(grid)
    upscale = await h.upscale(grid, 0)
    h.sandbox.complete(upscale)
    record = await h.record(upscale)
    return upscale, record["resultInfoJson"]["resultUrls"][0]["resultUrl"]


async def video(h: Harness, url: str, **extra: Any) -> str:
    body = {"taskType": "mj_video", "prompt": "a fox", "fileUrls": [url], "motion": "low"}
    status, envelope = await h.call("POST", GENERATE, body={**body, **extra})
    assert (status, envelope["code"]) == (200, 200), envelope
    task = envelope["data"]["taskId"]
    h.sandbox.complete(task)
    return str(task)


async def extend(h: Harness, task_id: str, index: int = 0) -> tuple[int, dict[str, Any]]:
    body = {"taskId": task_id, "index": index, "taskType": "mj_video_extend_auto"}
    return await h.call("POST", EXTEND, body=body)


async def files(h: Harness, task_id: str) -> list[bytes]:
    record = await h.record(task_id)
    found = []
    for entry in record["resultInfoJson"]["resultUrls"]:
        async with h.http.get(entry["resultUrl"]) as response:
            assert response.status == 200 and response.content_type == "video/mp4"
            found.append(await response.read())
    return found


async def test_a_video_of_an_upscale_is_a_real_mp4_per_video_of_its_batch(start: Start) -> None:
    h = await start(video_seconds=1.0)
    _, url = await upscaled(h)
    credits = h.sandbox.credits
    task = await video(h, url, videoBatchSize=2)
    # Two SD videos at the sandbox's price of one.
    assert credits - h.sandbox.credits == 2 * h.sandbox.video_cost
    made = await files(h, task)
    assert len(made) == 2 and made[0] != made[1]
    for data in made:
        assert video_kind(data) == "mp4"
        assert mp4_duration(data) == pytest.approx(1.0, abs=0.2)
    # It fetched the image, as the vendor must.
    assert h.sandbox.fetched[-1].url == url


async def test_hd_costs_three_times_sd(start: Start) -> None:
    h = await start(video_seconds=1.0)
    _, url = await upscaled(h)
    credits = h.sandbox.credits
    task = await video(h, url, taskType="mj_video_hd")
    assert credits - h.sandbox.credits == 3 * h.sandbox.video_cost
    assert h.sandbox.task(task).hd


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"motion": "medium"}, "motion"),
        ({"motion": None}, "motion"),
        ({"videoBatchSize": 3}, "videoBatchSize"),
        ({"videoBatchSize": True}, "videoBatchSize"),
        ({"fileUrls": []}, "fileUrls"),
    ],
)
async def test_bad_video_parameters_are_a_422_that_takes_nothing(
    start: Start, extra: dict[str, Any], word: str
) -> None:
    h = await start()
    _, url = await upscaled(h)
    body = {"taskType": "mj_video", "prompt": "a fox", "fileUrls": [url], "motion": "low"}
    body.update(extra)
    credits = h.sandbox.credits
    status, envelope = await h.call("POST", GENERATE, body=body)
    assert (status, envelope["code"]) == (422, 422) and word in envelope["msg"]
    assert h.sandbox.credits == credits


async def test_an_extension_is_one_longer_video_and_the_fifth_is_refused(start: Start) -> None:
    h = await start(video_seconds=1.0, extend_seconds=0.5)
    _, url = await upscaled(h)
    task = await video(h, url)
    for extensions in range(1, 5):
        credits = h.sandbox.credits
        status, envelope = await extend(h, task)
        assert (status, envelope["code"]) == (200, 200), envelope
        assert credits - h.sandbox.credits == h.sandbox.video_cost
        task = envelope["data"]["taskId"]
        h.sandbox.complete(task)
        assert h.sandbox.task(task).extensions == extensions
        [data] = await files(h, task)
        assert mp4_duration(data) == pytest.approx(1.0 + 0.5 * extensions, abs=0.2)
    credits = h.sandbox.credits
    status, envelope = await extend(h, task)
    assert (status, envelope["code"]) == (422, 422) and "4 times" in envelope["msg"]
    assert h.sandbox.credits == credits


async def test_extend_index_counts_from_its_base_within_the_batch(start: Start) -> None:
    h = await start(video_seconds=1.0, extend_index_base=1)
    _, url = await upscaled(h)
    task = await video(h, url, videoBatchSize=2)
    credits = h.sandbox.credits
    for index in (0, 3):
        status, envelope = await extend(h, task, index)
        assert (status, envelope["code"]) == (422, 422) and "index" in envelope["msg"]
    assert h.sandbox.credits == credits
    status, envelope = await extend(h, task, 2)
    assert status == 200
    assert h.sandbox.task(envelope["data"]["taskId"]).image_index == 1


async def test_what_cannot_be_extended_or_upscaled(start: Start) -> None:
    h = await start(video_seconds=1.0)
    upscale, url = await upscaled(h)
    # An image is no video, and a video no grid.
    status, envelope = await extend(h, upscale)
    assert (status, envelope["code"]) == (422, 422) and "not a video" in envelope["msg"]
    task = await video(h, url)
    status, envelope = await h.call(
        "POST",
        "api/v1/mj/generateUpscale",
        body={
            "taskId": task,
            "imageIndex": 0,
        },
    )
    assert status == 422
    status, envelope = await extend(h, "f" * 32)
    assert status == 404
    # A manual extension needs its prompt.
    status, envelope = await h.call(
        "POST", EXTEND, body={"taskId": task, "index": 0, "taskType": "mj_video_extend_manual"}
    )
    assert status == 422 and "prompt" in envelope["msg"]


async def test_video_bytes_pads_a_video_that_still_plays(start: Start) -> None:
    h = await start(video_seconds=1.0, video_bytes=3 * 1024 * 1024)
    _, url = await upscaled(h)
    task = await video(h, url)
    [data] = await files(h, task)
    assert len(data) >= 3 * 1024 * 1024
    assert video_kind(data) == "mp4" and mp4_duration(data) == pytest.approx(1.0, abs=0.2)
