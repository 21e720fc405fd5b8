"""Kinds of job as plug-ins: a module per built-in kind, found by the registry."""

from bot.jobs.kinds.base import (
    Button,
    Call,
    Dedupe,
    Hold,
    Kind,
    Per,
    Pieces,
    Product,
)
from bot.jobs.kinds.registry import (
    UnknownKind,
    all_kinds,
    button_kinds,
    buttons_under,
    kind_named,
    register,
    registered,
    unregister,
)

__all__ = [
    "Button",
    "Call",
    "Dedupe",
    "Hold",
    "Kind",
    "Per",
    "Pieces",
    "Product",
    "UnknownKind",
    "all_kinds",
    "button_kinds",
    "buttons_under",
    "kind_named",
    "register",
    "registered",
    "unregister",
]
