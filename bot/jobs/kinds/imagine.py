"""/imagine: a grid of four made from a prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.jobs.categories import GENERATION
from bot.jobs.kinds.base import Call, Kind, Pieces, Product, owner_mention
from bot.jobs.kinds.registry import register
from bot.jobs.vary_index import Sent

if TYPE_CHECKING:
    from bot.jobs.store import Job


class Imagine(Kind):
    name = "imagine"
    product = Product.GRID
    category = GENERATION

    def status_line(self, p: Pieces) -> str:
        return f"⏳ Generating {p.prompt} for {p.mention} (started {p.started})"

    def result_line(self, p: Pieces) -> str:
        return f"{p.prompt}{owner_mention(p.requester_id)}"

    def failure_what(self, p: Pieces) -> str:
        return f"Generation of {p.prompt}"

    async def send(self, call: Call, job: Job) -> Sent:
        return await generate(call, job)


async def generate(call: Call, job: Job) -> Sent:
    """The job's prompt and options generated (an /imagine, a re-roll of its grid)."""
    return Sent(
        await call.client.generate(
            job.prompt or "",
            speed=job.options.get("speed", "fast"),
            aspect_ratio=job.options.get("aspect_ratio"),
            version=job.options.get("version"),
            stylization=_number(job.options.get("stylization")),
            variety=_number(job.options.get("variety")),
            weirdness=_number(job.options.get("weirdness")),
            translate=job.options.get("translate") == "on",
            callback_url=call.callback_url,
        )
    )


def _number(value: str | None) -> int | None:
    # Stored as text, like every option; read_params wrote only whole numbers.
    return None if value is None else int(value)


IMAGINE = register(Imagine())
