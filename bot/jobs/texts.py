"""What the tracker tells a requester when it cannot take or start their request."""

from __future__ import annotations

from bot.jobs.kinds.base import Product
from bot.jobs.kinds.registry import kind_named
from bot.jobs.tables import JobState
from bot.midjourney.errors import ApiError


def queue_full(waiting: int) -> str:
    return (
        f"{waiting} requests are already waiting their turn at the Midjourney API, which takes "
        "only so many new jobs at a time; try again in a minute"
    )


def queued(ahead: int) -> str:
    return (
        f"⏳ Queued behind {ahead} other request(s): the Midjourney API takes only so many new "
        "jobs at a time. Yours starts by itself when its turn comes."
    )


def too_many_running(limit: int) -> str:
    return (
        f"you already have {limit} jobs running; wait until one of them is done"
        if limit > 1
        else "you already have a job running; wait until it is done"
    )


def maybe_started(problem: str, minutes: int) -> str:
    return (
        f"⚠️ {problem[:1].upper()}{problem[1:]}, but the request may have started anyway. "
        f"Waiting up to {minutes} min for its result; it is not sent again, so it cannot be "
        "charged twice."
    )


def expired(state: JobState, deadline_seconds: float) -> str:
    if state is JobState.SUBMITTING:
        return (
            "the Midjourney API did not confirm the request in time, so whether it ran is "
            "unknown; try again"
        )
    if state is JobState.SUCCEEDED:
        return "the result could not be posted to Discord in time"
    return f"no result from Midjourney within {round(deadline_seconds / 60)} minutes"


def extend_base_unknown(number: int) -> str:
    return (
        f"⏩ {number} cannot start yet: the bot has not learned how the Midjourney API numbers "
        "the videos of a batch (from 0 or from 1, its docs do not say), and a wrong guess would "
        "extend another video. A click on the first video's ⏩ teaches it once, or an admin sets "
        "MJ_EXTEND_INDEX_BASE; nothing was charged"
    )


def vary_base_unknown(number: int) -> str:
    return (
        f"V{number} cannot start yet: the bot has not learned how the Midjourney API numbers "
        "the images of a variation (0–3 or 1–4, its docs say both), and a wrong guess would vary "
        "another picture. A click on V1 or V4 teaches it once, or an admin sets "
        "MJ_VARY_INDEX_BASE; nothing was charged"
    )


# The owner's door (bot.jobs.servers): the member learns why, and an owner how to open it.
NOT_SERVED = (
    "The bot's owner has not enabled it in this server, so it starts nothing here. "
    "An owner of the bot can run /mj server allow in this server; nothing was charged"
)
ONLY_IN_SERVERS = (
    "The bot works only inside the servers its owner has enabled, not in direct messages nor "
    "through a copy you installed for yourself; nothing was charged"
)


def unknown_task() -> str:
    """A task this bot made in another server, in the very words said of a task the API does
    not know: the refusal tells nothing of it, not even that it exists."""
    return ApiError(404).user_message


def asked_elsewhere(kind: str) -> str:
    """A button whose job (of a grid made outside the bot) was asked for in another server:
    told without whose it is or where, and nothing is paid twice."""
    return f"{kind_named(kind).asked_elsewhere()}; nothing was started or charged"


def not_a(product: Product) -> str:
    """A button asked of a result that is not its kind's parent (U1 of an upscaled image)."""
    if product is Product.GRID:
        return "that task is not a grid of four images"
    return f"that task's result is not one {product.value}"


def unknown_kind() -> str:
    return "this version of the bot does not know that kind of job (its plug-in is gone)"


def reposts_used(limit: int, next_at: float | None) -> str:
    if next_at is None:
        return (
            "re-posting a grid with /upscale is turned off on this bot; name the image to "
            "upscale instead"
        )
    return (
        f"you have re-posted {limit} grid(s) in this server within the hour; the next one "
        f"<t:{int(next_at) + 1}:R>"
    )


def waited_too_long() -> str:
    return (
        "it waited too long for its turn at the Midjourney API to finish in time; nothing was "
        "charged, try again"
    )
