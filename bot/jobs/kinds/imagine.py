"""/imagine: a grid of four made from a prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.jobs.categories import GENERATION
from bot.jobs.cost_keys import cost_key_named
from bot.jobs.image_inputs import OMNI_STRENGTH, TASK_TYPE, InputsGone, references
from bot.jobs.kinds.base import Call, Kind, Pieces, Product, owner_mention
from bot.jobs.kinds.registry import register
from bot.jobs.params import RANGES
from bot.jobs.vary_index import Sent

if TYPE_CHECKING:
    from bot.jobs.store import Job


# Options of the prompt's typed parameters sent as whole numbers of the same name.
TYPED_NUMBERS = tuple(RANGES)


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

    def cost_key(self, job: Job) -> str:
        # A generation with images is priced by its task type (an omni reference at twice a
        # text one); every one counts as a generation for the allowances all the same.
        key = cost_key_named(job.options.get("task_type", ""))
        if key is None or key.category is not self.category:
            return super().cost_key(job)
        return key.name

    async def send(self, call: Call, job: Job) -> Sent:
        return await generate(call, job)


async def generate(call: Call, job: Job) -> Sent:
    """The job's prompt and options generated (an /imagine, a re-roll of its grid). Its images
    are the same links each time it is sent; raises InputsGone, before paying, once they are
    no longer to be had."""
    # The typed parameters' fields only when the job has them: left out, the API's defaults
    # apply. Stored as text, like every option; read_params wrote only whole numbers.
    typed: dict[str, Any] = {
        name: int(job.options[name]) for name in TYPED_NUMBERS if name in job.options
    }
    if job.options.get("translate") == "on":
        typed["translate"] = True
    # Only what the job has: a generation from a prompt alone is the call it always was.
    images: dict[str, Any] = {}
    if TASK_TYPE in job.options:
        images["task_type"] = job.options[TASK_TYPE]
    if OMNI_STRENGTH in job.options:
        images["omni_strength"] = int(job.options[OMNI_STRENGTH])
    if references(job.options):
        if call.inputs is None:
            raise InputsGone("the bot cannot serve the images it was made from")
        images["file_urls"] = await call.inputs.urls(job.options, call.public_base)
    return Sent(
        await call.client.generate(
            job.prompt or "",
            speed=job.options.get("speed", "fast"),
            aspect_ratio=job.options.get("aspect_ratio"),
            version=job.options.get("version"),
            **typed,
            callback_url=call.callback_url,
            **images,
        )
    )


IMAGINE = register(Imagine())
