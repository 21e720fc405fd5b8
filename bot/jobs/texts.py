"""What the tracker tells a requester when it cannot take or start their request."""

from __future__ import annotations


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
