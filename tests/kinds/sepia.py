"""A kind of job defined only in the tests: "Sepia" under an upscaled image makes a sepia-toned
copy of it, through an endpoint the API client has no method for and the sandbox is given from
outside. It proves a kind is a plug-in: nothing under bot/ or cogs/ names it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.jobs.categories import UPSCALE
from bot.jobs.kinds import Button, Call, Dedupe, Hold, Kind, Per, Pieces, Product
from bot.jobs.vary_index import Sent
from bot.midjourney.sandbox import SandboxAPI, SandboxTask, encode_png

if TYPE_CHECKING:
    from bot.jobs.store import Job

SEPIA_PATH = "/api/v1/mj/generateSepia"


class Sepia(Kind):
    name = "sepia"
    product = Product.IMAGE
    category = UPSCALE
    # After the built-in 🎬 buttons under an upscaled image.
    button = Button("mjs", "Sepia", row=0, per_image=False, under=Product.IMAGE, order=2)
    # One sepia copy per upscaled image, unless it failed.
    dedupe = Dedupe(Per.PARENT, Hold.LIVE)
    verb = "tone"

    def status_line(self, p: Pieces) -> str:
        return f"⏳ Toning {p.prompt} in sepia for {p.mention} (started {p.started})"

    def result_line(self, p: Pieces) -> str:
        return f"{p.prompt} - Sepia {p.mention}"

    def failure_what(self, p: Pieces) -> str:
        return f"Sepia of {p.prompt}"

    def not_started(self, number: int) -> str:
        return "The sepia copy was not started"

    def already(self, number: int, asker: str) -> str:
        return f"⏳ This image is already being toned in sepia (asked by {asker})."

    def already_done(self, number: int, link: str) -> str:
        return f"✅ This image was already toned in sepia: {link}"

    def asked_elsewhere(self) -> str:
        return "that image is being or was already toned in sepia elsewhere through this bot"

    async def send(self, call: Call, job: Job) -> Sent:
        assert job.parent_task_id is not None
        body = {"taskId": job.parent_task_id}
        if call.callback_url:
            body["callBackUrl"] = call.callback_url
        return Sent(await call.client.submit(SEPIA_PATH, body))


def sepia_rows(rows: list[bytes]) -> list[bytes]:
    """The classic sepia matrix on 8-bit RGB rows."""
    toned: list[bytes] = []
    for row in rows:
        out = bytearray()
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            out += bytes(
                min(255, int(r * cr + g * cg + b * cb))
                for cr, cg, cb in (
                    (0.393, 0.769, 0.189),
                    (0.349, 0.686, 0.168),
                    (0.272, 0.534, 0.131),
                )
            )
        toned.append(bytes(out))
    return toned


def add_sepia_endpoint(sandbox: SandboxAPI) -> str:
    """The sandbox's generateSepia: a sepia-toned copy of the finished upscale it names."""

    def make_result(task: SandboxTask, index: int) -> bytes:
        assert task.parent_task_id is not None
        rows = sepia_rows(sandbox.pixels(task.parent_task_id, 0))
        return encode_png(rows, {"Source": f"mj sandbox sepia {task.task_id}"})

    return sandbox.add_endpoint(SEPIA_PATH, make_result, task_type="mj_sepia", cost=2)
