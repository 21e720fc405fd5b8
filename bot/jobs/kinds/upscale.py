"""U1–U4 (and /upscale): one image of a grid, upscaled; made once per image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.jobs.categories import UPSCALE
from bot.jobs.kinds.base import Button, Call, Dedupe, Hold, Kind, Per, Pieces, Product
from bot.jobs.kinds.registry import register
from bot.jobs.vary_index import Sent

if TYPE_CHECKING:
    from bot.jobs.store import Job


class Upscale(Kind):
    name = "upscale"
    product = Product.IMAGE
    category = UPSCALE
    button = Button("mju", "U{n}", row=0, per_image=True, under=Product.GRID, order=0)
    # One live upscale per (grid, image): a second click gets the first back, or its result.
    dedupe = Dedupe(Per.IMAGE, Hold.LIVE)
    verb = "upscale"

    def status_line(self, p: Pieces) -> str:
        return f"⏳ Upscaling image #{p.number} for {p.mention} (started {p.started})"

    def result_line(self, p: Pieces) -> str:
        return f"{p.prompt} - Image #{p.number} {p.mention}"

    def failure_what(self, p: Pieces) -> str:
        return f"Upscale of image #{p.number}"

    def not_started(self, number: int) -> str:
        return f"Image #{number} was not upscaled"

    def already(self, number: int, asker: str) -> str:
        return (
            f"⏳ Image #{number} is already being upscaled (asked by {asker}); "
            "the result will be posted in the channel."
        )

    def already_done(self, number: int, link: str) -> str:
        return f"✅ Image #{number} was already upscaled: {link}"

    def asked_elsewhere(self) -> str:
        return "that image is being or was already upscaled elsewhere through this bot"

    async def send(self, call: Call, job: Job) -> Sent:
        assert job.parent_task_id is not None and job.image_index is not None
        return Sent(
            await call.client.upscale(
                job.parent_task_id,
                job.image_index,
                watermark=call.watermark,
                callback_url=call.callback_url,
            )
        )

    def keeps(self, urls: tuple[str, ...], job: Job | None = None) -> tuple[str, ...]:
        # The API may answer with more than the one image upscaled.
        return urls[:1]


register(Upscale())
