"""🎬 Animate (low motion) and 🎬 Animate (high motion): short videos of an upscaled image
(``mj_video`` or ``mj_video_hd`` with the image's URL), one running per image and motion."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from bot.jobs import video_options as vo
from bot.jobs.categories import VIDEOS
from bot.jobs.kinds.base import Button, Call, Dedupe, Hold, Kind, Per, Pieces, Product
from bot.jobs.kinds.registry import register
from bot.jobs.vary_index import Sent

if TYPE_CHECKING:
    from bot.jobs.store import Job


class Animate(Kind):
    product = Product.VIDEO
    category = VIDEOS
    # One running animation per (image, motion): once it is done a new click makes another.
    dedupe = Dedupe(Per.PARENT, Hold.UNFINISHED)
    verb = "animate"
    # The API animates the upscale's URL, which only the bot's own job of it holds.
    own_parent_only = True
    motion: ClassVar[str]

    def status_line(self, p: Pieces) -> str:
        return (
            f"⏳ Animating image #{vo.number(p.options)} ({self.motion} motion) for {p.mention} "
            f"(started {p.started})"
        )

    def result_line(self, p: Pieces) -> str:
        # bot.grid.grid_owner reads the owner back from these lines: keep them in step.
        return (
            f"{p.prompt} - Video (image #{vo.number(p.options)}, {self.motion} motion) {p.mention}"
        )

    def failure_what(self, p: Pieces) -> str:
        return f"Video of image #{vo.number(p.options)} ({self.motion} motion)"

    def not_started(self, number: int) -> str:
        return "The video was not started"

    def already(self, number: int, asker: str) -> str:
        return (
            f"⏳ This image is already being animated with {self.motion} motion (asked by "
            f"{asker}); the video will be posted in the channel. Once it is done, a new click "
            "makes another."
        )

    def asked_elsewhere(self) -> str:
        return "that image is being animated elsewhere through this bot"

    def cost_key(self, job: Job) -> str:
        return vo.cost_key(job, extend=False)

    def options_of(self, call: Call, parent: Job) -> dict[str, str]:
        return {
            **parent.options,
            vo.QUALITY: call.video_quality,
            vo.BATCH: str(call.video_batch),
            vo.MOTION: self.motion,
            vo.NUMBER: str((parent.image_index or 0) + 1),
            vo.IMAGE_URL: parent.result_urls[0] if parent.result_urls else "",
            vo.EXTENSIONS: "0",
        }

    async def grid_problem(self, call: Call, grid: Job, image_index: int | None) -> str | None:
        if not grid.result_urls:
            return "that image has no result to animate"
        if not grid.prompt:
            # The API wants a prompt with every video.
            return "the prompt of that image is unknown, and a video needs one"
        return vo.too_old(grid, "image")

    async def send(self, call: Call, job: Job) -> Sent:
        image_url = job.options.get(vo.IMAGE_URL)
        if not image_url or not job.prompt:
            raise ValueError("a video needs its image's URL and a prompt")
        return Sent(
            await call.client.video(
                image_url,
                prompt=job.prompt,
                motion=job.options.get(vo.MOTION, self.motion),
                hd=job.options.get(vo.QUALITY) == "hd",
                batch=vo.batch_of(job),
                watermark=call.watermark,
                callback_url=call.callback_url,
            )
        )

    def keeps(self, urls: tuple[str, ...], job: Job | None = None) -> tuple[str, ...]:
        # One per video asked for: a cover image or anything more is not one of them.
        return urls[: vo.batch_of(job)] if job is not None else urls


class AnimateLow(Animate):
    name = "animate_low"
    motion = "low"
    button = Button(
        "mjal", "🎬 Animate (low motion)", row=0, per_image=False, under=Product.IMAGE, order=0
    )


class AnimateHigh(Animate):
    name = "animate_high"
    motion = "high"
    button = Button(
        "mjah", "🎬 Animate (high motion)", row=0, per_image=False, under=Product.IMAGE, order=1
    )


register(AnimateLow())
register(AnimateHigh())
