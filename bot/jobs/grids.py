"""Grids the bot did not make: a finished generation looked up by task id, and posted with its
U1–U4 buttons (/upscale without an image), before anything is paid for it."""

from __future__ import annotations

from bot.jobs.types import DeliveryError, Publisher
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.midjourney.models import Task, TaskStatus


async def finished_grid(client: MidjourneyClient, task_id: str) -> Task | str:
    """The finished generation, or why it cannot be upscaled (for the requester)."""
    try:
        task = await client.record_info(task_id)
    except (ApiError, ApiUnreachable) as exc:
        return exc.user_message
    if task.status is TaskStatus.PENDING:
        return "that generation is still running; try again when it is done"
    if task.status is TaskStatus.FAILED:
        return f"that generation failed ({task.error})"
    return task


async def show_grid(
    client: MidjourneyClient,
    publisher: Publisher,
    task_id: str,
    *,
    requester_id: int,
    guild_id: int | None,
    channel_id: int,
) -> str | None:
    """Post the four images of any finished generation with U1–U4; the error if not."""
    task = await finished_grid(client, task_id)
    if isinstance(task, str):
        return task
    try:
        await publisher.post_grid(
            task, requester_id=requester_id, guild_id=guild_id, channel_id=channel_id
        )
    except DeliveryError as exc:
        return exc.reason
    return None
