"""The bound on what one checkpoint load may make the unpickler allocate, and its wording.

The walk of :mod:`.checkpoint_pickle` charges what each opcode would build; a load is refused once
the total passes the larger of `DATA_FLOOR` and `DATA_FACTOR` times the file's size.
"""

from __future__ import annotations

__all__ = ["DATA_FLOOR", "DATA_FACTOR", "Budget", "size_text"]

DATA_FLOOR = 64 << 20
# torch.save's own data is charged at most ~3 times its pickled size: a bytes value is pickled
# as its text (charged), encoded into bytes (charged), and a bytearray copies those (charged).
DATA_FACTOR = 4


def size_text(n: int) -> str:
    """n bytes in words: '1.5 MiB', '12 bytes'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


class Budget:
    """The data one load may build (see :mod:`.checkpoint_pickle` for what is charged), and what
    it went to: one charge a string, a call, a storage, a BUILD, or Python objects."""

    NOUNS = {"strings": ("string", "strings"), "storages": ("legacy storage", "legacy storages"),
             "setstate": ("BUILD (setstate)", "BUILDs (setstate)"),
             "objects": ("Python object or entry", "Python objects and entries")}

    def __init__(self, file_size: int):
        self.file_size = file_size
        self.limit = max(DATA_FLOOR, DATA_FACTOR * file_size)
        self.spent = 0
        self.by: dict[str, tuple[int, int]] = {}  # what -> (times, bytes)

    def charge(self, what: str, nbytes: int, times: int = 1) -> bool:
        """Add nbytes spent on `what` (times: of them); True once over the limit."""
        before, total = self.by.get(what, (0, 0))
        self.by[what] = (before + times, total + nbytes)
        self.spent += nbytes
        return self.spent > self.limit

    def cause(self) -> str:
        what, (times, nbytes) = max(self.by.items(), key=lambda item: item[1][1])
        one, many = self.NOUNS.get(what, (f"call of {what}", f"calls of {what}"))
        most = f"{times} {one if times == 1 else many}"
        never = "a checkpoint keeps its data in tensors" if what == "objects" else "torch.save never writes such data"
        return (f"could make the unpickler allocate over {size_text(self.limit)} ({most}: {size_text(nbytes)}) from "
                f"a file of {size_text(self.file_size)} ({never}; the limit is "
                f"{DATA_FACTOR} times the file's size, at least {size_text(DATA_FLOOR)})")
