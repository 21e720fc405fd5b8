"""The kinds of job, by name. Every module of this package is imported once, at the first
look-up, so a built-in kind is one new file that calls ``register``; a kind defined elsewhere
(a test's) registers itself the same way."""

from __future__ import annotations

import importlib
import pkgutil
import re

from bot.jobs.kinds.base import Kind, Product

_PREFIX = re.compile(r"[a-z0-9]{1,8}")
_kinds: dict[str, Kind] = {}
_loaded = False


class UnknownKind(KeyError):
    """No kind of job has that name."""


def register(kind: Kind) -> Kind:
    """Add ``kind``; its name and its button's prefix must be its own."""
    other = _kinds.get(kind.name)
    if other is not None and type(other) is not type(kind):
        raise ValueError(f"kind {kind.name!r} is already {other!r}")
    if kind.button is not None:
        if not _PREFIX.fullmatch(kind.button.prefix):
            # Letters and digits only: a prefix is matched before the ":" of every custom_id.
            raise ValueError(f"button prefix {kind.button.prefix!r} is not 1-8 of a-z, 0-9")
        for known in _kinds.values():
            if known.name != kind.name and known.button is not None:
                if known.button.prefix == kind.button.prefix:
                    raise ValueError(f"button prefix {kind.button.prefix!r} is {known!r}'s")
    _kinds[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Forget a kind registered from outside the package (a test's, once it is done)."""
    _kinds.pop(name, None)


def registered(name: str) -> bool:
    """Whether a kind of that name is registered (a stored job's may not be: a plug-in
    removed since, or a newer version's row after a rollback)."""
    _load_builtins()
    return name in _kinds


def kind_named(name: str) -> Kind:
    _load_builtins()
    try:
        return _kinds[name]
    except KeyError:
        raise UnknownKind(name) from None


def all_kinds() -> tuple[Kind, ...]:
    _load_builtins()
    return tuple(_kinds.values())


def buttons_under(product: Product) -> tuple[Kind, ...]:
    """The kinds whose button goes under a posted result of ``product``, in their order."""
    kinds = [k for k in all_kinds() if k.button is not None and k.button.under is product]
    return tuple(sorted(kinds, key=lambda k: (k.button.row, k.button.order) if k.button else ()))


def button_kinds() -> tuple[Kind, ...]:
    """Every kind started from a button."""
    return tuple(k for k in all_kinds() if k.button is not None)


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module(__package__ or "bot.jobs.kinds")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
