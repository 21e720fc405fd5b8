"""What was asked of one parent (a grid, an image) through its buttons: shown green."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParentUse:
    """The (kind name, image index) of each job asked of a parent that did not fail; the
    index is None for a kind with one button per message."""

    asked: frozenset[tuple[str, int | None]] = frozenset()

    def has(self, kind: str, image_index: int | None) -> bool:
        if image_index is None:
            return any(name == kind for name, _ in self.asked)
        return (kind, image_index) in self.asked
