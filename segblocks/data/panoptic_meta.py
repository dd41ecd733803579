"""Category metadata of a panoptic dataset and the COCO id <-> contiguous id maps.

COCO panoptic category ids are sparse (1..90 things, 92..200 stuff, with gaps); models predict
contiguous class ids ``0..K-1``. Contiguous ids follow ascending COCO id, so the mapping does not
depend on the order of the categories in a JSON file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["PanopticCategory", "PanopticMeta"]


@dataclass(frozen=True)
class PanopticCategory:
    """One category as in COCO panoptic's ``categories`` list.

    Args:
        id: COCO category id (positive; 0 is void in panoptic PNGs).
        name: category name.
        isthing: True for countable objects (one segment per instance), False for stuff
            (at most one segment per category and image).
        color: RGB colour used for visualisation.
    """

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]


@dataclass(frozen=True)
class PanopticMeta:
    """Categories of a panoptic dataset with contiguous ids ``0..num_classes-1``.

    Args:
        categories: categories sorted by ascending COCO id; category ``i`` has contiguous id ``i``.
    """

    categories: tuple[PanopticCategory, ...]

    def __post_init__(self) -> None:
        if not self.categories:
            raise ValueError("PanopticMeta needs at least one category, received none")
        ids = [c.id for c in self.categories]
        if ids != sorted(set(ids)):
            raise ValueError(f"category ids must be unique and ascending, received {ids}")
        if ids[0] <= 0:
            raise ValueError(f"category ids must be positive (0 is void), received {ids[0]}")

    @classmethod
    def from_coco_categories(cls, categories: Sequence[Mapping[str, Any]]) -> PanopticMeta:
        """Build from COCO ``categories`` dicts (keys ``id``, ``name``, ``isthing``, ``color``).

        ``color`` may be missing; a deterministic colour derived from the id is used then.
        """
        parsed = []
        for i, cat in enumerate(categories):
            missing = [k for k in ("id", "name", "isthing") if k not in cat]
            if missing:
                raise ValueError(f"category #{i} lacks key(s) {missing}; received keys {sorted(cat)}")
            cid = int(cat["id"])
            color = cat.get("color") or ((cid * 67) % 256, (cid * 131) % 256, (cid * 197) % 256)
            if len(color) != 3:
                raise ValueError(f"category id {cid}: color must be [r, g, b], received {color}")
            parsed.append(PanopticCategory(cid, str(cat["name"]), bool(cat["isthing"]), tuple(int(v) for v in color)))
        return cls(tuple(sorted(parsed, key=lambda c: c.id)))

    def to_coco_categories(self) -> list[dict[str, Any]]:
        """The categories as COCO ``categories`` dicts."""
        return [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)} for c in self.categories]

    @property
    def num_classes(self) -> int:
        """Number of categories K (void is not a class)."""
        return len(self.categories)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names indexed by contiguous id."""
        return tuple(c.name for c in self.categories)

    @property
    def thing_classes(self) -> tuple[int, ...]:
        """Contiguous ids of thing categories."""
        return tuple(i for i, c in enumerate(self.categories) if c.isthing)

    @property
    def stuff_classes(self) -> tuple[int, ...]:
        """Contiguous ids of stuff categories."""
        return tuple(i for i, c in enumerate(self.categories) if not c.isthing)

    @property
    def contiguous_to_coco(self) -> tuple[int, ...]:
        """COCO category id of each contiguous id."""
        return tuple(c.id for c in self.categories)

    @property
    def coco_to_contiguous(self) -> dict[int, int]:
        """Contiguous id of each COCO category id (a fresh dict; the meta itself is immutable)."""
        return {c.id: i for i, c in enumerate(self.categories)}

    def contiguous_id(self, coco_id: int) -> int:
        """Contiguous id of COCO category ``coco_id``; ValueError if it is not a known category."""
        mapping = self.coco_to_contiguous
        if coco_id not in mapping:
            raise ValueError(f"unknown category id {coco_id}; known ids: {sorted(mapping)}")
        return mapping[coco_id]
