"""/imagine: a grid of four made from a prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.jobs.categories import GENERATION
from bot.jobs.image_inputs import OMNI_STRENGTH, TASK_TYPE, InputsGone, references
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
    """The job's prompt and options generated (an /imagine, a re-roll of its grid). Its images
    are the same links each time it is sent; raises InputsGone, before paying, once they are
    no longer to be had."""
    file_urls: tuple[str, ...] = ()
    if references(job.options):
        if call.inputs is None:
            raise InputsGone("the bot cannot serve the images it was made from")
        file_urls = await call.inputs.urls(job.options, call.public_base)
    ow = job.options.get(OMNI_STRENGTH)
    return Sent(
        await call.client.generate(
            job.prompt or "",
            task_type=job.options.get(TASK_TYPE, "mj_txt2img"),
            speed=job.options.get("speed", "fast"),
            aspect_ratio=job.options.get("aspect_ratio"),
            version=job.options.get("version"),
            omni_strength=None if ow is None else int(ow),
            file_urls=file_urls,
            callback_url=call.callback_url,
        )
    )


IMAGINE = register(Imagine())
