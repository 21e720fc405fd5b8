"""🔄: a grid's prompt and options generated again, a new grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.jobs.categories import GENERATION
from bot.jobs.kinds.base import (
    Button,
    Call,
    Dedupe,
    Hold,
    Kind,
    Per,
    Pieces,
    Product,
    owner_mention,
)
from bot.jobs.kinds.imagine import IMAGINE, generate
from bot.jobs.kinds.registry import register
from bot.jobs.vary_index import Sent
from bot.midjourney.models import Task

if TYPE_CHECKING:
    from bot.jobs.store import Job

# Task types whose grid a re-roll (a text-to-image generate of its prompt) makes again.
REROLLABLE = ("mj_txt2img",)


class Reroll(Kind):
    name = "reroll"
    product = Product.GRID
    category = GENERATION
    button = Button("mjr", "🔄", row=0, per_image=False, under=Product.GRID, order=1)
    # One running 🔄 per grid: once it is finished a new click makes another grid.
    dedupe = Dedupe(Per.PARENT, Hold.UNFINISHED)
    needs_grid = True
    verb = "re-roll"

    def status_line(self, p: Pieces) -> str:
        return f"⏳ Re-rolling {p.prompt} for {p.mention} (started {p.started})"

    def result_line(self, p: Pieces) -> str:
        return f"{p.prompt}{owner_mention(p.requester_id)} (re-roll)"

    def failure_what(self, p: Pieces) -> str:
        return f"Re-roll of {p.prompt}"

    def not_started(self, number: int) -> str:
        return "The re-roll was not started"

    def already(self, number: int, asker: str) -> str:
        return (
            f"⏳ This grid is already being re-rolled (asked by {asker}); the new grid will be "
            "posted in the channel. Once it is done, a new click makes another."
        )

    def asked_elsewhere(self) -> str:
        return "that grid is being re-rolled elsewhere through this bot"

    def cost_key(self, job: Job) -> str:
        # The grid's options are copied: it costs what the grid's generation cost.
        return IMAGINE.cost_key(job)

    async def send(self, call: Call, job: Job) -> Sent:
        return await generate(call, job)

    async def grid_problem(self, call: Call, grid: Job, image_index: int | None) -> str | None:
        # A grid made from images is made again from the same ones, while they are to be had.
        if call.inputs is None:
            return None
        return await call.inputs.problem(grid.options)

    def checks_parent(self, job: Job) -> bool:
        # Stored before record-info told its grid's prompt (a crash in between, or a grid whose
        # own job never learned it): a generation of nothing is not sent.
        return not job.prompt

    def parent_problem(self, job: Job, task: Task) -> str | None:
        problem = super().parent_problem(job, task)
        if problem is not None:
            return problem
        if not task.prompt:
            return "the API does not say what that grid's prompt was"
        if task.task_type not in (None, *REROLLABLE):
            # A grid made outside the bot: record-info does not give its input images, so a
            # re-roll would be another, paid, picture.
            return "only grids generated from a text prompt can be re-rolled here"
        return None


register(Reroll())
