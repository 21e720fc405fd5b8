"""A member's daily numbers, a field per cost category (bot.jobs.categories): the allowance
that follows from the settings and the limits admins set, and the words for them in /mj limit,
/mj usage and /mj status."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.jobs import categories
from bot.jobs.categories import CostCategory
from bot.jobs.ledger import LimitRow
from bot.jobs.tables import UNLIMITED_ROW


def by_option(number: Callable[[CostCategory], int | None]) -> dict[str, Any]:
    """``number`` of each cost category, by its option: the keywords of ``Rules``,
    ``Allowance`` and ``Ledger.set_limit``."""
    return {c.option: number(c) for c in categories.CATEGORIES}


@dataclass(frozen=True)
class Allowance:
    """A member's daily numbers, a field per cost category named as its option; None is
    unlimited."""

    imagines: int | None
    upscales: int | None
    videos: int | None

    def of(self, category: str) -> int | None:
        number: int | None = getattr(self, categories.category_named(category).option)
        return number


def _stored(value: int | None) -> int | None:
    return None if value == UNLIMITED_ROW else value


def resolve(rows: list[LimitRow], default: Allowance) -> Allowance:
    """A member-specific limit beats the roles'; the roles' is the most generous of them
    (unlimited beats any number); with neither, the settings'."""

    def one(pick: Callable[[LimitRow], int | None], fallback: int | None) -> int | None:
        for row in rows:
            if row.target_type == "member" and pick(row) is not None:
                return _stored(pick(row))
        roles = [
            _stored(pick(row))
            for row in rows
            if row.target_type == "role" and pick(row) is not None
        ]
        if not roles:
            return fallback
        if None in roles:
            return None
        return max(v for v in roles if v is not None)

    def pick(option: str) -> Callable[[LimitRow], int | None]:
        return lambda row: getattr(row, option)

    return Allowance(**by_option(lambda c: one(pick(c.option), default.of(c.name))))


def daily_numbers(numbers: object) -> dict[str, int | None]:
    """The daily number of each cost category (by name) of anything with a field per category
    named as its option (settings' ``Rules``, an ``Allowance``, a ``LimitRow``)."""
    return {c.name: getattr(numbers, c.option) for c in categories.CATEGORIES}


def amount(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


def noun(category: str, n: int) -> str:
    named = categories.category_named(category)
    return named.one if n == 1 else named.plural


def listed(parts: list[str]) -> str:
    """ "a, b and c"."""
    if len(parts) < 2:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


def per_category(numbers: dict[str, int | None]) -> str:
    """ "20 generations, 40 upscales and 5 videos": a daily number of each cost category."""
    return listed([f"{amount(number)} {noun(name, 2)}" for name, number in numbers.items()])


def target_mention(guild_id: int, target_type: str, target_id: int) -> str:
    if target_type == "member":
        return f"<@{target_id}>"
    return "@everyone" if target_id == guild_id else f"<@&{target_id}>"


def falls_back(target_type: str) -> str:
    if target_type == "member":
        return "their roles' limits apply, or the settings'"
    return "its members have their other roles' limits, or the settings'"


def set_or_not(value: int | None) -> str:
    return "(not set)" if value is None else amount(_stored(value))
