"""⏩ Extend: a video made longer by Midjourney's own continuation (generateVideoExtend), one
running per video of a batch. An extension is a video too, with its ⏩, up to the vendor's four
extensions; the fifth is refused before anything is paid."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from bot.jobs import video_options as vo
from bot.jobs.categories import VIDEOS
from bot.jobs.kinds.base import Button, Call, Dedupe, Hold, Kind, Per, Pieces, Product
from bot.jobs.kinds.registry import register
from bot.jobs.vary_index import Sent

if TYPE_CHECKING:
    from bot.jobs.store import Job


class Extend(Kind):
    name = "extend"
    product = Product.VIDEO
    category = VIDEOS
    button = Button("mjx", "⏩ {n}", row=0, per_image=True, under=Product.VIDEO, alone="⏩ Extend")
    # One running extension per (video task, video of its batch).
    dedupe = Dedupe(Per.IMAGE, Hold.UNFINISHED)
    verb = "extend"
    # Its texts and its limit of four come from the video's own job.
    own_parent_only = True

    def status_line(self, p: Pieces) -> str:
        return (
            f"⏳ Extending the video of image #{vo.number(p.options)} for {p.mention} "
            f"(extension {p.options.get(vo.EXTENSIONS, '?')} of {vo.MAX_EXTENSIONS}, "
            f"started {p.started})"
        )

    def result_line(self, p: Pieces) -> str:
        # bot.grid.grid_owner reads the owner back from these lines: keep them in step.
        return (
            f"{p.prompt} - Video (image #{vo.number(p.options)}, "
            f"{p.options.get(vo.MOTION, '?')} motion, extended "
            f"{p.options.get(vo.EXTENSIONS, '?')}×) {p.mention}"
        )

    def failure_what(self, p: Pieces) -> str:
        return f"Extension of the video of image #{vo.number(p.options)}"

    def not_started(self, number: int) -> str:
        return "The video was not extended"

    def already(self, number: int, asker: str) -> str:
        return (
            f"⏳ This video is already being extended (asked by {asker}); the longer video will "
            "be posted in the channel."
        )

    def asked_elsewhere(self) -> str:
        return "that video is being extended elsewhere through this bot"

    def cost_key(self, job: Job) -> str:
        return vo.cost_key(job, extend=True)

    def options_of(self, call: Call, parent: Job) -> dict[str, str]:
        return {
            **parent.options,
            vo.VIDEOS: str(len(parent.result_urls)),
            vo.EXTENSIONS: str(vo.extensions(parent) + 1),
        }

    def parent_count(self, job: Job) -> int:
        raw = job.options.get(vo.VIDEOS, "1")
        return int(raw) if raw.isdigit() else 1

    async def grid_problem(self, call: Call, grid: Job, image_index: int | None) -> str | None:
        done = vo.extensions(grid)
        if done >= vo.MAX_EXTENSIONS:
            return (
                f"that video was extended {vo.MAX_EXTENSIONS} times already, as long as "
                "Midjourney makes them (about 21 seconds)"
            )
        count = len(grid.result_urls)
        if image_index is None or image_index >= count:
            return "that video does not exist"
        index = call.extend_index
        if index is not None and not await index.can_send(image_index, count):
            return index.unknown(image_index + 1)
        return vo.too_old(grid, "video")

    async def send(self, call: Call, job: Job) -> Sent:
        assert job.parent_task_id is not None and job.image_index is not None
        assert call.extend_index is not None
        extend = functools.partial(
            call.client.extend_video,
            job.parent_task_id,
            watermark=call.watermark,
            callback_url=call.callback_url,
        )
        return await call.extend_index.send(
            job.image_index, extend, job.label, second=call.second, count=self.parent_count(job)
        )

    def keeps(self, urls: tuple[str, ...], job: Job | None = None) -> tuple[str, ...]:
        # The extended video is one video; anything more (a cover image) is not it.
        return urls[:1]


register(Extend())
