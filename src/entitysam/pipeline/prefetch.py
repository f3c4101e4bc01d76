"""Reading ahead: the next frames are decoded and preprocessed while the device computes."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from .live import FrameReader

T = TypeVar("T")


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield `items`, produced on a background thread up to `depth` items ahead.

    Errors of the producer are raised here, in order; closing the generator stops the thread
    after the item it is producing.
    """
    reader = FrameReader(iter(items), depth, drop=False)
    try:
        while True:
            kind, item, _ = reader.queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item[0]
    finally:
        reader.stop(wait=0)
