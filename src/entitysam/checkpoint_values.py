"""What the walk of :mod:`.checkpoint_pickle` knows of each object a pickle would make torch's
unpickler build (`Value`, of a kind: INT ... CONST), and what hashing some of them as the keys of
dicts and sets would cost that unpickler.

* `KeyWork(file_size)`: the keys of one walk. `add(container, keys)` records the keys a SETITEM
  puts in a dict (or an APPEND in a list that a set or Counter may be made of), `replay(keys)`
  charges a container made of those keys (a set, a Counter, an OrderedDict, a BUILD's state),
  `finish()` what the dicts built cost; each raises `Refused` past `MAX_COMPARED` comparisons of
  keys of one hash, or `max(MAX_HASHED, file_size)` tuple items hashed.
* `complex_of(items)`: what ``complex(*items)`` makes, where the walk knows the arguments.
* `numpy_dtype(code)`, `numpy_order(dtype, state)`, `numpy_scalar(dtype, data)`: a numpy scalar as
  numpy pickles it (``scalar(dtype(code), bytes)``), hashed as the Python number of its value.

CPython keeps the keys of a dict or set that share a hash in one chain: each insertion compares the
new key with every key of its hash before it, and hashes a tuple anew, item by item. A pickle
chooses the hashes of numbers freely: ints k * (2**61 - 1) all hash to 0, hash(-1) == hash(-2) (and
so do tuples of -1 and -2 in any order), a two-int tuple can be solved for any hash, complex(a, b)
hashes to hash(a) + 1000003 * hash(b). A dict of 60 000 such ints, a 780 KB file, kept the loader
busy for minutes. Strings and bytes hash with a key random to each process, tensors and classes by
identity: no file chooses theirs, and such keys are not followed (inside a tuple: a stand-in of a
random hash). A numpy scalar hashes as the Python number of its value (np.int64(5) as 5): torch.save
writes dicts of thousands of them.
"""

from __future__ import annotations

import random
import struct
import sys
from array import array

from .errors import CheckpointReadError

__all__ = ["INT", "STR", "BYTES", "LIST", "TUPLE", "DICT", "SET", "TENSOR", "STORAGE", "GLOBAL", "OTHER",
           "CONST", "CONTAINERS", "MAX_COMPARED", "MAX_HASHED", "NUMPY_DTYPE", "Value", "Refused", "KeyWork", "complex_of",
           "numpy_dtype", "numpy_order", "numpy_scalar"]

# CONST: None, a bool, a float or a complex number, kept as itself (the walk hashes it as Python does)
INT, STR, BYTES, LIST, TUPLE, DICT, SET, TENSOR, STORAGE, GLOBAL, OTHER, CONST = range(12)
CONTAINERS = (LIST, TUPLE, DICT, SET)
# Keys of one hash compared, in all: ~0.3 s of an int's comparisons; a dict of 5 800 keys of one
# hash (torch.save's never share one: strings, and ints below 2**61 hash to distinct values).
MAX_COMPARED = 1 << 24
# Tuple items hashed as keys, in all, where the file is smaller: each use of a key hashes it again.
MAX_HASHED = 1 << 24
_P = (1 << 61) - 1  # CPython's modulus of numeric hashes: an int k hashes to k but for -1 and |k| >= _P
_UNHASHED = object()
# Random hashes of stand-ins (its own generator: the program's random numbers stay as they were)
_STAND_IN = random.Random()
NUMPY_DTYPE = "numpy.dtype"  # the value of a Value of a numpy dtype (items: its code and byte order)
_FLOAT = {2: "e", 4: "f", 8: "d"}  # struct's codes of the floats of numpy's dtypes f2, f4, f8 (c8, c16: pairs)
# Kinds never followed as keys: hashed at random (str, bytes), by identity (tensors, storages,
# classes), or not at all (lists, dicts, sets: the unpickler fails at the first)
_NOT_CHOSEN = frozenset({STR, BYTES, TENSOR, STORAGE, GLOBAL, LIST, DICT, SET})


class Value:
    """What the walk knows of an object the unpickler would build (an int is kept as itself: the
    walk holds about what the unpickler does). n: a string's characters, a container's entries, a
    tensor's elements; size: the bytes of a string or bytes, of the strings in a tuple; keys: the
    `_Keys` of a dict, a set or a list, of a tuple's items; hash: that of the object, once known."""

    __slots__ = ("kind", "n", "size", "depth", "items", "value", "nested", "copied", "nodes", "keys", "hash")

    def __init__(self, kind: int, n: int = 0, size: int = 0, value=None):
        self.kind, self.n, self.size, self.value = kind, n, size, value
        self.depth, self.items, self.nested, self.copied, self.nodes = 0, (), False, False, 1
        self.keys, self.hash = None, _UNHASHED


class Refused(CheckpointReadError):
    """Why the walk refuses the pickle (over the budget, too deep, a call that cannot be bounded)."""


class _Hashed:
    """An item of a given hash: a tuple of these hashes as the tuple of the items would."""

    __slots__ = ("h",)

    def __init__(self, h: int):
        self.h = h

    def __hash__(self) -> int:
        return self.h


def _hash_of(x) -> int | None:
    """The hash of the object x stands for (a class: a stand-in fixed by its name), None where the
    walk cannot know it (a numpy scalar, a device, bytes, what a call it does not follow returns)."""
    if type(x) is int:
        return hash(x)
    if x.hash is _UNHASHED:
        x.hash = None
        if x.kind in (CONST, GLOBAL) or (x.kind in (STR, BYTES) and x.value is not None):
            x.hash = hash(x.value)
        elif x.kind == TUPLE:  # each shared part hashed once: x.hash keeps it
            items = [item if type(item) is int else _hash_of(item) for item in x.items]
            if None not in items:
                x.hash = hash(tuple(item if type(known) is int else _Hashed(item)
                                    for item, known in zip(items, x.items)))
        elif x.kind in _NOT_CHOSEN:  # hashed by identity or at random (or not at all): no file chooses it
            x.hash = _STAND_IN.getrandbits(62)
    return x.hash


def _key(x) -> tuple[int | None, int] | None:
    """(hash, items hashed) of x as a key, where a file may choose its hash; None where it cannot."""
    if type(x) is int:  # distinct ints below _P hash to distinct values: at most one shares another key's
        return None if x != -1 and -_P < x < _P else (hash(x), 1)
    return None if x.kind in _NOT_CHOSEN else (_hash_of(x), x.nodes)


class _Keys:
    """The keys followed of one container: their hashes (in `unknown` those the walk cannot know,
    counted as all of one hash), the items hashing them walks, the most items of one (what one
    comparison walks), and the comparisons already charged."""

    __slots__ = ("hashes", "unknown", "nodes", "widest", "paid", "counted")

    def __init__(self):
        self.hashes, self.unknown, self.nodes, self.widest, self.paid = array("q"), 0, 0, 1, 0
        self.counted = (0, 0)  # (keys, pairs sharing a hash) when last counted

    def add(self, key: tuple[int | None, int]) -> None:
        h, nodes = key
        if h is None:
            self.unknown += 1
        else:
            self.hashes.append(h)
        self.nodes += nodes
        self.widest = max(self.widest, nodes)

    def compared(self) -> int:
        """An upper bound of the comparisons putting these keys in a dict or set makes."""
        if self.counted[0] != len(self.hashes):  # by sorting: no hash table of the file's hashes
            pairs, run, last = 0, 0, None
            for h in sorted(self.hashes):
                run = run + 1 if h == last else 0
                pairs, last = pairs + run, h
            self.counted = (len(self.hashes), pairs)
        return (self.counted[1] + self.unknown * (self.unknown - 1) // 2) * self.widest

    def copy(self) -> _Keys:
        other = _Keys()
        other.hashes, other.unknown, other.nodes, other.widest = array("q", self.hashes), self.unknown, \
            self.nodes, self.widest
        return other


class KeyWork:
    """The keys of one walk (see the module's docstring)."""

    def __init__(self, file_size: int):
        self.compared, self.hashed = 0, 0
        self.max_hashed = max(MAX_HASHED, file_size)
        self.dicts: list[_Keys] = []  # of the dicts built, charged at the end

    def add(self, container: Value, keys, charged: bool = True) -> None:
        """Keys put in a dict (charged) or a list (charged when a set is made of it)."""
        for key in keys:
            key = _key(key)
            if key is not None:
                if container.keys is None:
                    container.keys = _Keys()
                    if charged:
                        self.dicts.append(container.keys)
                container.keys.add(key)
                if charged:
                    self.charge(0, key[1])

    def replay(self, source: Value, pairs: bool = False) -> _Keys | None:
        """Charge a dict or set made of source's keys (pairs: of the first items of its pairs);
        their _Keys."""
        if source.kind == TUPLE and not pairs:  # items known: counted once a tuple
            if source.keys is None:
                source.keys = _Keys()
                for key in filter(None, map(_key, source.items)):
                    source.keys.add(key)
            keys = source.keys
        elif source.kind == TUPLE:  # the first item of each pair (of an unknown hash where not a tuple)
            keys = _Keys()
            for pair in source.items:
                tuple_pair = type(pair) is Value and pair.kind == TUPLE and pair.items
                key = _key(pair.items[0]) if tuple_pair else (None, 1)
                if key is not None:
                    keys.add(key)
        elif (pairs and source.kind in (LIST, SET)) or (source.kind == TENSOR and source.value == "ndarray"):
            keys = _Keys()  # pairs whose items the walk does not keep; a numpy array's scalars (n: its bytes)
            keys.unknown = keys.nodes = source.n
        else:  # a dict's keys; the items of a list or set
            keys = source.keys if source.kind in (LIST, DICT, SET) else None
        if keys is not None:
            self.charge(keys.compared(), keys.nodes)
        return keys

    def built(self, state: Value) -> None:
        """Charge a BUILD's state put in an instance's __dict__ (torch: ``inst.__dict__.update(state)``):
        a dict's keys, a list's or a tuple's pairs, and those of the first item of a 2-tuple
        (state, slotstate), as torch takes it for a class of the allow-list."""
        for state in (state, state.items[0]) if state.kind == TUPLE and len(state.items) == 2 else (state,):
            if type(state) is Value and state.kind in (DICT, LIST, TUPLE):
                self.replay(state, pairs=state.kind != DICT)

    def made(self, keys: _Keys | None) -> _Keys | None:
        """The keys of a new dict made of `keys` (just charged): more may be added to it."""
        if keys is None:
            return None
        copied = keys.copy()
        copied.paid = copied.compared()
        self.dicts.append(copied)
        return copied

    def finish(self) -> None:
        """Charge the comparisons of the dicts built."""
        self.charge(sum(keys.compared() - keys.paid for keys in self.dicts), 0)

    def charge(self, compared: int, hashed: int) -> None:
        self.compared += compared
        self.hashed += hashed
        if self.compared > MAX_COMPARED:
            raise Refused(f"holds dict or set keys that share their hash, or whose hash cannot be known before they "
                          f"are built (building them could compare keys over {MAX_COMPARED} times, taking time "
                          "that grows with the square of their number)")
        if self.hashed > self.max_hashed:
            raise Refused(f"holds dict or set keys of over {self.max_hashed} tuple items in all once their "
                          "shared parts are counted at each use (torch.save never does; hashing them would "
                          "take minutes)")


def complex_of(items: tuple) -> Value | None:
    """complex(*items), where the walk knows the numbers or the short strings given; else None."""
    values = []
    for item in items:
        if type(item) is int or item.kind == CONST or (item.kind == STR and item.value is not None):
            values.append(item if type(item) is int else item.value)
        else:
            return None
    try:
        return Value(CONST, value=complex(*values))
    except (TypeError, ValueError, OverflowError):  # the unpickler's call fails alike
        return None


def numpy_dtype(code: Value) -> Value:
    """numpy's dtype(code, ...): its code ("i8", "f4", "b1", "U5"), of the machine's byte order."""
    dtype = Value(OTHER, value=NUMPY_DTYPE)
    dtype.items = (code.value if code.kind == STR else None, "=")
    return dtype


def numpy_order(dtype: Value, state: Value) -> None:
    """BUILD of a numpy dtype: the byte order its state's second item gives ("<", ">", "|", "=")."""
    order = state.items[1] if state.kind == TUPLE and len(state.items) > 1 else None
    if type(order) is Value and order.kind == STR:
        dtype.items = (dtype.items[0], order.value)


def numpy_scalar(dtype: Value, data: Value) -> Value:
    """numpy's scalar(dtype, data): a bool, an int, a float or a complex number hashes as the Python
    number of its value (np.int64(5) as 5: numpy hashes it so); a string (hashed at random) and a NaN
    (by identity) by a stand-in; any other's hash is not known."""
    made = Value(OTHER)
    code, order = dtype.items if dtype.kind == OTHER and dtype.value == NUMPY_DTYPE else (None, None)
    raw = data.value if data.kind == BYTES else None
    if not code or type(raw) is not bytes:
        return made
    kind, size = code[0], code[1:]
    if kind in "SU":
        made.hash = _STAND_IN.getrandbits(62)
        return made
    if not size.isdigit() or int(size) != len(raw):
        return made
    big = order == ">" or (order == "=" and sys.byteorder == "big")
    if kind in "iu":
        number = int.from_bytes(raw, "big" if big else "little", signed=kind == "i")
    elif kind == "b" and len(raw) == 1:
        number = raw != b"\0"
    elif kind in "fc" and len(raw) // (1 + (kind == "c")) in _FLOAT:
        parts = struct.unpack((">" if big else "<") + _FLOAT[len(raw) // (1 + (kind == "c"))] * (1 + (kind == "c")),
                              raw)
        number = complex(*parts) if kind == "c" else parts[0]
        if number != number:  # a NaN: hashed by identity
            made.hash = _STAND_IN.getrandbits(62)
            return made
    else:
        return made
    made.hash = hash(number)
    return made
