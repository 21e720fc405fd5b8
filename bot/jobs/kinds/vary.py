"""V1–V4: four variations of one image of a grid (generateVary), a grid of its own."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from bot.jobs.categories import GENERATION
from bot.jobs.kinds.base import Button, Call, Dedupe, Hold, Kind, Per, Pieces, Product
from bot.jobs.kinds.registry import register
from bot.jobs.vary_index import Sent

if TYPE_CHECKING:
    from bot.jobs.store import Job


class Vary(Kind):
    name = "vary"
    product = Product.GRID
    category = GENERATION
    button = Button("mjv", "V{n}", row=1, per_image=True, under=Product.GRID, order=0)
    # One running V<n> per (grid, image): once it is finished a new click makes another set.
    dedupe = Dedupe(Per.IMAGE, Hold.UNFINISHED)
    needs_grid = True
    verb = "vary"

    def status_line(self, p: Pieces) -> str:
        return f"⏳ Making variations of image #{p.number} for {p.mention} (started {p.started})"

    def result_line(self, p: Pieces) -> str:
        # bot.grid.grid_owner reads the owner back from these lines: keep them in step.
        return f"{p.prompt} - Variations (image #{p.number}) {p.mention}"

    def failure_what(self, p: Pieces) -> str:
        return f"Variations of image #{p.number}"

    def not_started(self, number: int) -> str:
        return f"Variations of image #{number} were not started"

    def already(self, number: int, asker: str) -> str:
        return (
            f"⏳ Variations of image #{number} are already being made (asked by {asker}); the new "
            "grid will be posted in the channel. Once it is done, a new click makes another."
        )

    def asked_elsewhere(self) -> str:
        return "variations of that image are being made elsewhere through this bot"

    async def may_send(self, call: Call, image_index: int | None) -> str | None:
        # V2/V3 wait until the API's numbering is known: a wrong guess varies another picture.
        if image_index is not None and not await call.vary_index.can_send(image_index):
            return call.vary_index.unknown(image_index + 1)
        return None

    async def send(self, call: Call, job: Job) -> Sent:
        assert job.parent_task_id is not None and job.image_index is not None
        vary = functools.partial(
            call.client.vary,
            job.parent_task_id,
            watermark=call.watermark,
            callback_url=call.callback_url,
        )
        return await call.vary_index.send(job.image_index, vary, job.label, second=call.second)


register(Vary())
