"""🎬 Animate and ⏩ Extend as kinds: what a click stores, what it is refused for before paying,
what it sends, what it keeps, and which videos' index is safe while the API's base is unknown."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from bot.jobs.kinds import Call, kind_named
from bot.jobs.vary_index import BaseUnknown, Sent, VaryIndex, extend_index
from tests.kinds.test_kinds import FakeClient, NoFacts, job

UPSCALE_URL = "https://tempfile.aiquickdraw.com/v/up_0_0.png"


class VideoClient(FakeClient):
    async def video(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("video", args, kwargs))
        return "video-task"

    async def extend_video(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("extend_video", args, kwargs))
        return "extend-task"


def video_call(
    client: FakeClient, *, extend_base: int | None = None, quality: str = "sd", batch: int = 1
) -> Call:
    vary = VaryIndex(NoFacts(), 0)  # type: ignore[arg-type]
    extend = extend_index(NoFacts(), extend_base)  # type: ignore[arg-type]
    return Call(
        client,  # type: ignore[arg-type]
        "https://bot/cb/x",
        None,
        vary,
        video_quality=quality,
        video_batch=batch,
        extend_index=extend,
    )


def upscale_job(**fields: Any) -> Any:
    values: dict[str, Any] = {
        "image_index": 2,
        "result_urls": (UPSCALE_URL,),
        "completed_at": time.time() - 3600,
    }
    values.update(fields)
    return job("upscale", **values)


def video_job(kind: str, **options: str) -> Any:
    base = {"video_quality": "sd", "video_batch": "1", "motion": "low", "number": "3"}
    return job(
        kind,
        image_index=0 if kind == "extend" else None,
        options={**base, **options},
        result_urls=("v0", "v1"),
        completed_at=time.time() - 60,
    )


def test_animate_keeps_what_its_click_asked_for() -> None:
    low = kind_named("animate_low")
    options = low.options_of(video_call(VideoClient(), quality="hd", batch=4), upscale_job())
    assert options["video_quality"] == "hd" and options["video_batch"] == "4"
    assert options["motion"] == "low" and options["number"] == "3"
    assert options["image_url"] == UPSCALE_URL and options["extensions"] == "0"
    # The grid's own options (its typed parameters) come along for the captions.
    assert options["aspect_ratio"] == "16:9"
    assert (
        kind_named("animate_high").options_of(video_call(VideoClient()), upscale_job())["motion"]
        == "high"
    )


@pytest.mark.parametrize(
    ("kind", "options", "key"),
    [
        ("animate_low", {}, "video"),
        ("animate_high", {"video_batch": "2"}, "video_x2"),
        ("animate_low", {"video_quality": "hd", "video_batch": "4"}, "video_hd_x4"),
        ("extend", {"video_batch": "4"}, "video_extend"),
        ("extend", {"video_quality": "hd"}, "video_extend_hd"),
    ],
)
def test_a_video_is_reserved_at_the_cost_key_of_what_was_asked(
    kind: str, options: dict[str, str], key: str
) -> None:
    assert kind_named(kind).cost_key(video_job(kind, **options)) == key


async def test_animate_refuses_before_paying_what_the_api_could_not_use() -> None:
    low, c = kind_named("animate_low"), video_call(VideoClient())
    assert await low.grid_problem(c, upscale_job(), None) is None
    assert "no result" in str(await low.grid_problem(c, upscale_job(result_urls=()), None))
    assert "prompt" in str(await low.grid_problem(c, upscale_job(prompt=None), None))
    old = upscale_job(completed_at=time.time() - 15 * 86400)
    assert "14 days" in str(await low.grid_problem(c, old, None))
    assert low.own_parent_only and kind_named("extend").own_parent_only


async def test_animate_sends_the_upscales_image_with_what_was_stored() -> None:
    client = VideoClient()
    low = kind_named("animate_low")
    stored = video_job(
        "animate_low", image_url=UPSCALE_URL, video_quality="hd", video_batch="2", motion="low"
    )
    assert await low.send(video_call(client, quality="sd", batch=1), stored) == Sent("video-task")
    [(name, args, kwargs)] = client.calls
    assert name == "video" and args == (UPSCALE_URL,)
    # The stored choice, not today's settings.
    assert kwargs["hd"] is True and kwargs["batch"] == 2 and kwargs["motion"] == "low"
    assert kwargs["prompt"] == "a fox" and kwargs["callback_url"] == "https://bot/cb/x"


def test_animate_keeps_one_url_per_video_asked_for() -> None:
    low = kind_named("animate_low")
    urls = ("v0", "v1", "cover.jpg")
    assert low.keeps(urls, video_job("animate_low", video_batch="2")) == ("v0", "v1")
    assert kind_named("extend").keeps(urls, video_job("extend")) == ("v0",)


def test_an_extension_counts_its_extensions_and_its_parents_videos() -> None:
    extend = kind_named("extend")
    parent = video_job("animate_low", extensions="2")
    options = extend.options_of(video_call(VideoClient()), parent)
    assert options["extensions"] == "3" and options["videos"] == "2"
    assert options["motion"] == "low" and options["number"] == "3"
    assert extend.parent_count(video_job("extend", videos="4")) == 4


async def test_extend_refuses_the_fifth_a_missing_video_and_an_old_one() -> None:
    extend, c = kind_named("extend"), video_call(VideoClient(), extend_base=0)
    assert await extend.grid_problem(c, video_job("animate_low", extensions="3"), 0) is None
    fifth = await extend.grid_problem(c, video_job("extend", extensions="4"), 0)
    assert fifth is not None and "4 times" in fifth
    assert "does not exist" in str(await extend.grid_problem(c, video_job("animate_low"), 2))
    old = dataclasses.replace(video_job("animate_low"), completed_at=time.time() - 15 * 86400)
    assert "14 days" in str(await extend.grid_problem(c, old, 0))


@pytest.mark.parametrize(
    ("index", "count", "safe"),
    [(0, 1, True), (0, 2, True), (1, 2, False), (1, 4, False), (2, 4, False), (3, 4, True)],
)
async def test_which_videos_may_be_extended_while_the_base_is_unknown(
    index: int, count: int, safe: bool
) -> None:
    extend, client = kind_named("extend"), VideoClient()
    c = video_call(client)
    parent = dataclasses.replace(
        video_job("animate_low"), result_urls=tuple(f"v{i}" for i in range(count))
    )
    problem = await extend.grid_problem(c, parent, index)
    assert (problem is None) is safe
    if not safe:
        assert problem is not None and "MJ_EXTEND_INDEX_BASE" in problem
        stored = video_job("extend", videos=str(count))
        with pytest.raises(BaseUnknown):
            await extend.send(c, dataclasses.replace(stored, image_index=index))
        assert client.calls == []


async def test_extend_sends_through_its_own_index_base() -> None:
    client = VideoClient()
    extend = kind_named("extend")
    stored = dataclasses.replace(video_job("extend", videos="2"), image_index=1)
    sent = await extend.send(video_call(client, extend_base=1), stored)
    assert sent == Sent("extend-task")
    [(name, args, _)] = client.calls
    assert name == "extend_video" and args == ("a" * 32, 2)
    # While unknown, the first video is sent as 0 and what it teaches goes to the extend index.
    c = video_call(VideoClient())
    taught = await extend.send(c, dataclasses.replace(stored, image_index=0))
    assert taught.teaches == 0 and taught.learner is c.extend_index
