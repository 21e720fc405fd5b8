"""What a kind of job is: the ``Kind`` base class a kind's module subclasses, and the data it
declares (its product, its button, its dedupe rule). The kind's texts, paid call and checks are
its methods; nothing here knows discord.py: the channel's words come in already made
(``Pieces``), and bot/delivery/texts.py fills them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from bot.jobs.categories import CostCategory
from bot.jobs.tables import JobState
from bot.midjourney.models import GRID_SIZE, TASK_ID_PATTERN, Task, is_task_id

if TYPE_CHECKING:
    from bot.jobs.image_inputs import ImageInputs
    from bot.jobs.store import Job
    from bot.jobs.vary_index import Sent, VaryIndex
    from bot.midjourney.client import MidjourneyClient

# Discord refuses custom_ids over 100 characters; prefix + 64-char task id + ":n" stays at 71.
CUSTOM_ID_LIMIT = 100


class Product(StrEnum):
    """What a job's result is, and so how it is posted and which buttons go under it."""

    GRID = "grid"
    IMAGE = "image"
    # One or more videos (a batch), posted as attachments or links.
    VIDEO = "video"


class Per(StrEnum):
    """What one job of a kind is unique to: one image of its parent, or the whole parent."""

    IMAGE = "image"
    PARENT = "parent"


class Hold(StrEnum):
    """How long a job keeps its twins away: while it did not fail (an upscale is made once),
    or while it runs (a finished variation may be asked for again: a new set)."""

    LIVE = "live"
    UNFINISHED = "unfinished"


@dataclass(frozen=True)
class Dedupe:
    per: Per
    held: Hold

    def holds(self, state: JobState) -> bool:
        """Whether a job in ``state`` still makes a second click a duplicate."""
        if self.held is Hold.LIVE:
            return state is not JobState.FAILED
        return state not in (JobState.DELIVERED, JobState.FAILED)

    def key(self, kind: str, parent_task_id: str, image_index: int | None) -> str:
        """One value per job that may live at once (``jobs.dedupe_key``, set while it holds)."""
        if self.per is Per.PARENT:
            return f"{kind}:{parent_task_id}"
        return f"{kind}:{parent_task_id}:{image_index}"


@dataclass(frozen=True)
class Button:
    """A kind's button under a posted result of product ``under``: per image (numbered 1–4,
    under a grid) or one per message. All a click needs is in its custom_id, so buttons posted
    before a restart keep working: never change a prefix or a format."""

    prefix: str
    # "U{n}": {n} is the image's number for a button per image.
    label: str
    row: int
    per_image: bool
    under: Product
    # Its place in its row (buttons of one row in this order).
    order: int = 0
    # Shown green once a job of the kind was asked of its parent (and did not fail).
    turns_green: bool = True
    # The label of a button per image under a result of one item (a batch of one video).
    alone: str | None = None

    @property
    def template(self) -> str:
        """The custom_id's pattern, with groups ``task`` (and ``n``, the number 1–4)."""
        prefix = re.escape(self.prefix)
        if self.per_image:
            return rf"{prefix}:(?P<task>{TASK_ID_PATTERN}):(?P<n>[1-{GRID_SIZE}])"
        return rf"{prefix}:(?P<task>{TASK_ID_PATTERN})"

    def custom_id(self, task_id: str, number: int | None = None) -> str:
        """The custom_id of this button (number 1–4 per image) under the result of ``task_id``."""
        if not is_task_id(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        if not self.per_image:
            return f"{self.prefix}:{task_id}"
        if type(number) is not int or not 1 <= number <= GRID_SIZE:
            raise ValueError(f"button {number} does not exist; they are numbered 1 to {GRID_SIZE}")
        custom_id = f"{self.prefix}:{task_id}:{number}"
        assert len(custom_id) <= CUSTOM_ID_LIMIT
        return custom_id

    def parse(self, custom_id: str) -> tuple[str, int | None] | None:
        """(task id, image index 0–3 or None) of one of these buttons' custom_id, else None."""
        match = re.fullmatch(self.template, custom_id)
        if match is None:
            return None
        number = match.groupdict().get("n")
        return match["task"], None if number is None else int(number) - 1

    def label_of(self, number: int | None, count: int = GRID_SIZE) -> str:
        """The label of button ``number`` under a result of ``count`` items."""
        if count == 1 and self.alone is not None:
            return self.alone
        return self.label.format(n=number)

    def numbers(self, count: int = GRID_SIZE) -> tuple[int | None, ...]:
        """The buttons of one posted result of ``count`` items: one per item, or the one."""
        return tuple(range(1, min(count, GRID_SIZE) + 1)) if self.per_image else (None,)


@dataclass(frozen=True)
class Pieces:
    """A job's parts as the channel shows them, made by bot/delivery/texts.py."""

    # The prompt, bold and escaped (or the words for none).
    prompt: str
    requester_id: int
    # The image's number 1–4 of its parent (1 when the kind names no image).
    number: int
    # When the job started, as a Discord timestamp ("<t:…:R>").
    started: str
    # The job's stored options (a video's motion, its extension's number).
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def mention(self) -> str:
        return f"<@{self.requester_id}>"


def owner_mention(user_id: int) -> str:
    """How a grid message's first line ends: the mention of whom the grid was made for."""
    return f" - <@{user_id}>"


@dataclass(frozen=True)
class Call:
    """What a kind's paid call may use: the API client, the job's callback URL, the watermark,
    the index base of generateVary (``second``: the other base, to send again), and the images
    members gave (``inputs``, served under ``public_base``: PUBLIC_URL, or None)."""

    client: MidjourneyClient
    callback_url: str | None
    watermark: str | None
    vary_index: VaryIndex
    second: int | None = None
    inputs: ImageInputs | None = None
    public_base: str | None = None
    # VIDEO_QUALITY and VIDEO_BATCH_SIZE, stored in a new video job's options.
    video_quality: str = "sd"
    video_batch: int = 1
    # The index base of generateVideoExtend, learnt as generateVary's is.
    extend_index: VaryIndex | None = None


class Kind:
    """One kind of job. A subclass declares the data below and writes its texts and its paid
    call; an instance is registered (bot.jobs.kinds.registry). ``name`` is what ``jobs.kind``
    stores: never rename one."""

    name: ClassVar[str]
    product: ClassVar[Product]
    category: ClassVar[CostCategory]
    # Started from a button under an earlier result, and the rule that makes a click a twin.
    button: ClassVar[Button | None] = None
    dedupe: ClassVar[Dedupe | None] = None
    # Its parent must be a whole grid of four (checked for a parent made outside the bot).
    needs_grid: ClassVar[bool] = False
    # The word for what the button does, in "may not {verb} this grid".
    verb: ClassVar[str] = ""
    # Made only from a result the bot posted and knows (a video needs its parent's image URL).
    own_parent_only: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<kind {self.name}>"

    def cost_key(self, job: Job) -> str:
        """What the budget reserves the job at and learns the cost of (bot.jobs.cost_keys): its
        category's own key unless the kind tells its jobs apart."""
        return self.category.name

    def twin_key(self, parent_task_id: str | None, image_index: int | None) -> str | None:
        """The ``jobs.dedupe_key`` a new job of this kind holds; None when it has no twins (no
        dedupe, no parent, or no image where the rule is per image)."""
        if self.dedupe is None or parent_task_id is None:
            return None
        if self.dedupe.per is Per.IMAGE and image_index is None:
            return None
        return self.dedupe.key(self.name, parent_task_id, image_index)

    # -- the channel's words ----------------------------------------------------------------

    def status_line(self, p: Pieces) -> str:
        raise NotImplementedError

    def result_line(self, p: Pieces) -> str:
        raise NotImplementedError

    def failure_what(self, p: Pieces) -> str:
        """What failed, in "❌ {what} for @user failed: …"."""
        raise NotImplementedError

    # -- the clicker's words ----------------------------------------------------------------

    def not_started(self, number: int) -> str:
        """What was not done, before a refusal's reason."""
        raise NotImplementedError

    def already(self, number: int, asker: str) -> str:
        """A click on a button whose job runs (``asker``: its requester's mention)."""
        raise NotImplementedError

    def already_done(self, number: int, link: str) -> str:
        """A click on a button whose job was delivered (held while live only)."""
        return f"✅ Already done: {link}"

    def asked_elsewhere(self) -> str:
        """Its twin was asked for in another server (of a parent made outside the bot)."""
        raise NotImplementedError

    # -- the paid call ----------------------------------------------------------------------

    async def may_send(self, call: Call, image_index: int | None) -> str | None:
        """Why it cannot be asked for now (the reason, nothing charged), or None."""
        return None

    async def send(self, call: Call, job: Job) -> Sent:
        """The paid request; its task id (and what its answer teaches)."""
        raise NotImplementedError

    def keeps(self, urls: tuple[str, ...], job: Job | None = None) -> tuple[str, ...]:
        """What its finished task's result URLs keep (of ``job``, when known)."""
        return urls

    def options_of(self, call: Call, parent: Job) -> dict[str, str]:
        """The new job's options, made from its parent's (the bot's job that made it): what
        its paid call and its texts need, fixed when it is asked for."""
        return parent.options

    async def grid_problem(self, call: Call, grid: Job, image_index: int | None) -> str | None:
        """Why it cannot be made from ``grid`` (the bot's job that made it) now, for the
        clicker, before anything is stored or paid; None when it can."""
        return None

    def parent_count(self, job: Job) -> int:
        """How many items its parent's result holds (the buttons under it)."""
        return GRID_SIZE

    def checks_parent(self, job: Job) -> bool:
        """Whether its parent must be looked at before paying though the bot made it."""
        return False

    def parent_problem(self, job: Job, task: Task) -> str | None:
        """Why ``task`` (its finished parent, made outside the bot or not known well enough)
        cannot be used, for the requester; None when it can."""
        if self.needs_grid and len(task.result_urls) < GRID_SIZE:
            return "that task is not a grid of four images"
        if job.image_index is not None and job.image_index >= len(task.result_urls):
            return "that task has no such image"
        return None
