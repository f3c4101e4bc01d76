"""What one pickle of a checkpoint would make torch's weights-only unpickler build, found by walking
its opcodes (``pickletools.genops``) once, without building anything.

* `walk_pickle(stream, budget, legacy=False)`: the cause to refuse the pickle (a phrase: "nests
  tuples more than 100 deep (...)"), or None. It follows how deeply tuples nest (hashing a key of
  ~10k nested tuples overflowed the C stack) and charges to `budget` an upper bound of the data
  the unpickler would allocate.
* `Budget(file_size)` (:mod:`.checkpoint_budget`): that bound, shared by the pickles one load
  reads, refused over the larger of `DATA_FLOOR` and `DATA_FACTOR` times the file's size.
* The keys of the dicts and sets it would build, where their hashes are the file's choice, are
  followed by :mod:`.checkpoint_values` (`KeyWork`): keys of one hash are refused in numbers.

What is charged follows from the opcodes' arguments: each string at its size; what the callables
torch allows build from theirs (``bytearray(n)``, ``_codecs.encode`` of a string, tensors and
storages of a given size, sets and Counters of a container's items); a legacy storage at its
declared size. A reference through the memo is free, a call that copies it is charged each time
(a 1 MB string memoised once and encoded 2000 times: 2 GB from a 1 MB file). A list, tuple or dict
is copied free the first time. Python's own size of each object (a container, an entry, an int, a
float, a memo entry: 50 to 200 bytes an opcode in a pickle of empty dicts) is charged as "objects".
"""

from __future__ import annotations

import gc
import pickletools
import sys

import _compat_pickle  # the Python 2 names torch's unpickler maps, as it does

from .checkpoint_budget import DATA_FACTOR, DATA_FLOOR, Budget
from .checkpoint_values import (BYTES, CONST, CONTAINERS, DICT, GLOBAL, INT, LIST, OTHER, SET, STORAGE, STR, TENSOR,
                                NUMPY_DTYPE, TUPLE, KeyWork, Refused, Value, complex_of, numpy_dtype, numpy_order,
                                numpy_scalar)

__all__ = ["MAX_TUPLE_DEPTH", "MAX_TUPLE_NODES", "DATA_FLOOR", "DATA_FACTOR", "Budget", "walk_pickle"]

# torch.save nests tuples a few levels deep (a tensor's size inside its rebuild arguments); hashing
# a tuple recurses in C once per level, and some ten thousand levels overflow the C stack.
MAX_TUPLE_DEPTH = 100
# Tuples each holding the one before twice (through the memo) double in size when walked out at
# each level: a dict key 50 levels deep, in a 361-byte pickle, would hash for months.
MAX_TUPLE_NODES = 1 << 20

# The opcodes torch's weights-only unpickler runs. It stops at any other, and at a GLOBAL it
# refuses: nothing after is built, and only the tuple depth is followed on (for a full unpickler).
_TORCH_OPS = frozenset(
    "GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWFALSE "
    "NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT BINUNICODE "
    "SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 PROTO STOP".split())
# torch's default allow-list outside torch (whose names, and numpy's that the loader adds, are all
# followed: following one torch refuses only charges more)
_PLAIN_ALLOWED = frozenset({"builtins.bytearray", "builtins.set", "builtins.complex", "_codecs.encode",
                            "collections.OrderedDict", "collections.Counter"})
_CAP = 1 << 80  # sizes are clamped: a product of a million sizes stays a small number
_ITEM = 128  # an entry of a set or dict made from an iterated item
_TENSOR_ITEM = 1024  # an iterated tensor's item is a new 0-d tensor (~700 bytes measured)
_WIDE = 16  # the widest element (complex128), where the dtype is not known
_ELEMENT = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
            "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt32": 4, "QInt8": 1, "QUInt8": 1,
            "QUInt4x2": 1, "QUInt2x4": 1, "Untyped": 1}
_DTYPE = {"float64": 8, "double": 8, "complex128": 16, "cdouble": 16, "complex64": 8, "cfloat": 8, "int64": 8,
          "long": 8, "uint64": 8, "float32": 4, "float": 4, "int32": 4, "int": 4, "uint32": 4, "float16": 2,
          "half": 2, "bfloat16": 2, "int16": 2, "short": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}
# sys.getsizeof (64-bit CPython) of what an opcode builds, and of an entry it adds: a list's slot,
# a dict's entry (42 bytes at a million), a memo entry (a dict entry and its key)
_OBJECT = {"EMPTY_LIST": 56, "EMPTY_DICT": 64, "EMPTY_SET": 216, "BINFLOAT": 24, "APPEND": 8, "APPENDS": 8,
           "SETITEM": 48, "SETITEMS": 48, "BINPUT": 64, "LONG_BINPUT": 64, "PUT": 64, "MEMOIZE": 64}
# Text codecs (bytes a character) and error handlers whose output is bounded by the string; any
# other (hex doubles bytes at each call, namereplace writes ~90 bytes a character, a third-party
# codec anything) cannot be bounded.
_CODECS = {"latin1": 1, "iso88591": 1, "l1": 1, "ascii": 1, "usascii": 1, "utf8": 4}
_ERRORS = frozenset({"strict", "ignore", "replace", "surrogateescape", "surrogatepass"})
# Calls that build no data (views of storages, references); where a tensor's size is among the
# arguments, its index: a later copy of the tensor costs its elements.
_NO_DATA = {f"torch._utils._rebuild_{n}": at for n, at in (
    ("tensor", 2), ("tensor_v2", 2), ("tensor_v3", 2), ("meta_tensor_no_storage", 1), ("parameter", None),
    ("parameter_with_state", None), ("sparse_tensor", None), ("nested_tensor", None), ("wrapper_subclass", None))}

_NOTHING = Value(OTHER)
_NO_TENSOR = Value(TENSOR)  # of no elements
_EMPTY = Value(TUPLE)
_EMPTY.depth = 1
_CONSTANTS = {"NONE": Value(CONST), "NEWTRUE": Value(CONST, value=True), "NEWFALSE": Value(CONST, value=False)}


def _v(x) -> Value:
    """x as a Value (n: an int's value, clamped)."""
    return x if type(x) is Value else Value(INT, min(max(x, 0), _CAP), value=x)


def _global_name(arg: str) -> str:
    module, _, name = arg.partition(" ")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _user_allowed() -> frozenset[str]:
    """Names the program added to torch's allow-list (torch.serialization.add_safe_globals)."""
    from torch.serialization import get_safe_globals  # noqa: PLC0415 - torch is imported by whoever loads

    return frozenset(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in get_safe_globals())


def _data(v: Value) -> int:
    """Bytes of v's own data that a copy duplicates (a string's, bytes', a tuple's strings')."""
    return v.size if v.kind in (STR, BYTES, TUPLE) else 0


def _entries(v: Value, each: int, distinct: bool = False) -> int:
    """Bytes of a new container (`each` bytes an entry) of v's items. A list, tuple, dict or set
    is copied free the first time (building it took an opcode an entry), charged after."""
    if v.kind == TENSOR:
        return v.n * max(each, _TENSOR_ITEM)
    if v.kind in (STR, BYTES):  # a set or dict of characters or small ints holds each once
        return each * (min(v.n, 0x110000 if v.kind == STR else 256) if distinct else v.n)
    if v.kind in CONTAINERS:
        first, v.copied = not v.copied, True
        return 0 if first else each * v.n
    return 0


def _product(v: Value) -> int:
    """Elements of a tensor of size v (a tuple of ints); _CAP when its items are not known."""
    if v.kind != TUPLE or v.nested:
        return _CAP
    if v.value is None:
        total = 1
        for item in v.items:
            total = min(total * max(item, 0), _CAP) if type(item) is int else total
        v.value = total
    return v.value


def _element(name: str | None) -> int:
    """Bytes an element of a storage or tensor class ("torch.FloatStorage") or a dtype ("torch.float32") takes."""
    short = (name or "").rpartition(".")[2]
    return _ELEMENT.get(short.removesuffix("Storage").removesuffix("Tensor"), _DTYPE.get(short, _WIDE))


def _arg(items: tuple, i: int) -> Value:
    return _v(items[i]) if i < len(items) else _NOTHING


def _per_char(name: str, encoding: Value, errors: Value) -> int:
    """Bytes a character `name` (encode, bytearray) makes of a string with these arguments."""
    per = _CODECS.get(encoding.value.lower().replace("-", "").replace("_", "")) \
        if encoding.kind == STR and encoding.value is not None else None
    if per is None or (errors is not _NOTHING and errors.value not in _ERRORS):
        raise Refused(f"calls {name} with a codec or an error handler other than a plain text encoding "
                      "(torch.save never writes such a call, only 'latin1'; what others make cannot be bounded)")
    return per


def _tensor_elements(name: str, items: list) -> int:
    """Elements a tensor or storage class makes of these arguments (sizes, or data). A sparse class
    makes none (an empty sparse tensor of any size, or one of given indices and values)."""
    if ".sparse." in name:
        return 0
    total = 1
    for item in map(_v, items):
        if item.kind in (LIST, TUPLE) and item.nested:
            raise Refused(f"calls {name} with nested lists (torch.save never writes such a call; "
                          "the size of what it makes cannot be bounded)")
        count = max(_product(item), item.n) if item.kind == TUPLE else item.n  # a list: data
        total = min(total * max(count, 1), _CAP)
    return total


_TUPLES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_EMPTIES = {"EMPTY_LIST": LIST, "EMPTY_DICT": DICT, "EMPTY_SET": SET}


class _Walk:
    def __init__(self, budget: Budget, legacy: bool):
        self.budget, self.legacy = budget, legacy
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict = {}
        self.live = True  # False from where torch's unpickler would have stopped
        self.keys: set = set()  # legacy storages allocated (by key)
        self.user = _user_allowed()
        self.key_work = KeyWork(budget.file_size)
        self.storages = Value(DICT)  # torch's dict of the storages loaded, by key

    def charge(self, what: str, nbytes: int, times: int = 1) -> None:
        if nbytes and self.budget.charge(what, nbytes, times):
            raise Refused(self.budget.cause())

    def pop(self, count: int | None) -> list:
        """The top `count` entries of the stack (None: those above the last mark), removed."""
        start = self.marks.pop() if count is None else len(self.stack) - count
        if start < 0:
            raise IndexError("stack underflow")
        items, self.stack[start:] = self.stack[start:], []
        return items

    def tuple_of(self, items: list) -> Value:
        if not items:
            return _EMPTY
        t = Value(TUPLE, len(items))
        for item in items:
            if type(item) is Value:
                t.depth = max(t.depth, item.depth)
                t.nested = t.nested or item.kind in CONTAINERS or item.nested
                t.size += item.size if item.kind in (STR, BYTES) else 0
        t.nodes = min(1 + sum(item.nodes if type(item) is Value else 1 for item in items), _CAP)
        if t.nodes > MAX_TUPLE_NODES:  # what hashing or printing it walks, shared parts once per use
            raise Refused(f"holds a tuple of more than {MAX_TUPLE_NODES} entries once its shared parts are "
                          "counted at each use (torch.save never does; hashing it would not end)")
        if t.depth >= MAX_TUPLE_DEPTH:
            raise Refused(f"nests tuples more than {MAX_TUPLE_DEPTH} deep (torch.save never does; "
                          "unpickling it would crash Python)")
        t.depth += 1
        t.items = tuple(items)
        self.charge("objects", 40 + 8 * len(items) if self.live else 0)  # sys.getsizeof of the tuple
        return t

    def step(self, op, arg) -> None:
        name, stack = op.name, self.stack
        if name not in _TORCH_OPS:
            self.live = False  # torch: "Unsupported operand"
        if name == "MARK":
            self.marks.append(len(stack))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = stack[-1]
            self.charge("objects", _OBJECT[name] if self.live else 0)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self.live = self.live and arg in self.memo  # else a KeyError in torch
            stack.append(self.memo.get(arg, _NOTHING))
        elif name == "TUPLE" or name in _TUPLES:
            stack.append(self.tuple_of(self.pop(_TUPLES.get(name))))
        elif not self.live:  # past where torch stops: only the stack effect (the depth of tuples after)
            before = op.stack_before
            if pickletools.markobject in before:
                self.pop(None)
                before = before[:before.index(pickletools.markobject)]
            self.pop(len(before))
            stack.extend(_NOTHING for _ in op.stack_after)
        elif name in ("BININT", "BININT1", "BININT2", "LONG1"):
            self.charge("objects", 0 if -5 <= arg <= 256 else sys.getsizeof(arg))  # small ints are shared
            stack.append(arg)
        elif name in ("BINUNICODE", "SHORT_BINSTRING"):
            size = sys.getsizeof(arg)
            self.charge("strings", size)
            stack.append(Value(STR, len(arg), size, arg if len(arg) <= 64 else None))
            stack[-1].hash = hash(arg)  # (for a key: the unpickler's string hashes alike in this process)
        elif name in _EMPTIES:
            self.charge("objects", _OBJECT[name])
            stack.append(Value(_EMPTIES[name]))
        elif name == "GLOBAL":
            full = _global_name(arg)
            self.live = full in _PLAIN_ALLOWED or full.startswith(("torch.", "numpy.")) or full in self.user
            stack.append(Value(GLOBAL, value=full))
        elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS"):
            items = self.pop({"APPEND": 1, "SETITEM": 2}.get(name))
            target = _v(stack[-1])
            self.live = target.kind == (LIST if name.startswith("APPEND") else DICT)  # else torch refuses
            if self.live:  # a list's items are not kept: how many, and whether one is a container
                added = len(items) if target.kind == LIST else len(items) // 2
                self.charge("objects", added * _OBJECT[name], added)
                target.n = min(target.n + added, _CAP)
                target.nested = target.nested or any(type(i) is Value and (i.kind in CONTAINERS or i.nested)
                                                     for i in items)
                self.key_work.add(target, items if target.kind == LIST else items[::2], charged=target.kind == DICT)
        elif name in ("REDUCE", "NEWOBJ"):  # NEWOBJ, cls.__new__(cls, *args), charged as a call: more
            args = _v(stack.pop())
            stack.append(self.call(_v(stack.pop()), args))
        elif name == "BUILD":
            self.build(_v(stack.pop()), _v(stack[-1]))
        elif name == "BINPERSID":
            stack.append(self.storage(_v(stack.pop())))
        elif name in _CONSTANTS:  # (shared)
            stack.append(_CONSTANTS[name])
        elif name == "BINFLOAT":
            self.charge("objects", _OBJECT[name])
            stack.append(Value(CONST, value=arg))

    def build(self, state: Value, inst: Value) -> None:
        """BUILD: setstate copies the state (a numpy array its bytes); a tensor's views a storage."""
        if inst.kind != TENSOR or inst.value == "ndarray":
            cost = _data(state) + _entries(state, _ITEM)
            self.charge("setstate", cost)
            if inst.value == NUMPY_DTYPE:
                numpy_order(inst, state)
            elif inst.value != "ndarray":  # (an OrderedDict's __dict__ updated with its keys)
                self.key_work.built(state)
            else:
                inst.n = cost

    def storage(self, pid: Value) -> Value:
        """BINPERSID: a storage. In a zip archive it is its record, read at the record's size (torch
        checks it); the legacy format allocates what the pickle declares, once a key."""
        items = pid.items if pid.kind == TUPLE else []
        kind = _arg(items, 1)
        element = _element(kind.value if kind.kind == GLOBAL else None)
        if len(items) >= 3:
            self.key_work.add(self.storages, items[2:3])
        view = _arg(items, 5)
        if self.legacy and view.kind == TUPLE and view.items:  # a view's key, in the same dict
            self.key_work.add(self.storages, view.items[:1])
        if self.legacy and len(items) >= 5:
            key, numel = _arg(items, 2), _arg(items, 4)  # (as text: ints of one hash would slow this set)
            key = (key.kind, str(key.value)) if key.kind in (STR, INT) and key.value is not None else key
            if key not in self.keys:
                self.keys.add(key)
                self.charge("storages", min(numel.n * element, _CAP) if numel.kind == INT else 0)
        return Value(STORAGE, value=element)

    def call(self, func: Value, args: Value) -> Value:
        """REDUCE or NEWOBJ: what func(*args) builds, its cost charged."""
        name = func.value if func.kind == GLOBAL else None
        if name is None:
            return _NOTHING  # not a callable: torch's call fails
        if args.kind != TUPLE:
            raise Refused(f"calls {name} with arguments that are not a tuple (torch.save never writes such a call)")
        items = args.items
        first = _arg(items, 0)
        if name in ("builtins.bytearray", "_codecs.encode"):
            if len(items) > 1 or name == "_codecs.encode":  # whatever it encodes: encode(b, "hex") doubles b
                per = _per_char(name, _arg(items, 1) if len(items) > 1 else Value(STR, value="utf-8"), _arg(items, 2))
                cost = first.n * per if first.kind == STR else 0  # a text codec takes only a string
            else:  # bytearray(n), or a copy of what it iterates
                cost = first.n if first.kind in (INT, BYTES) else _entries(first, 1)
            self.charge(name, cost)
            made = Value(BYTES, cost, cost)
            if len(items) == 2 and _arg(items, 1).value == "latin1" and first.kind == STR and first.value:
                made.value = first.value.encode("latin-1", "replace")  # (a numpy scalar's bytes, as pickle writes them)
            return made
        if name in ("builtins.set", "collections.Counter", "collections.OrderedDict"):
            count = _entries(first, _ITEM, distinct=True)
            self.charge(name, count)
            made = Value(SET if name == "builtins.set" else DICT, first.n)
            keys = self.key_work.replay(first, pairs=name == "collections.OrderedDict")
            made.keys = keys if made.kind == SET else self.key_work.made(keys)
            return made
        if name == "torch.Size":  # a tuple of the items
            self.charge(name, _entries(first, 8))
            if first.kind == TUPLE:
                return first  # the same items
            unknown, unknown.nested = Value(TUPLE, first.n), True  # items not known: as a size, unbounded
            return unknown
        if name.endswith(("Tensor", "TypedStorage", "UntypedStorage")) and name.startswith("torch."):
            elements = _tensor_elements(name, items)
            self.charge(name, min(elements * _element(name), _CAP) + 8 * len(items))  # also pays for this look
            return Value(TENSOR, elements)
        if name == "torch.nn.parameter.Parameter":
            return first if first.kind == TENSOR else _NO_TENSOR
        if name in _NO_DATA:  # a view of a storage of that size; a parameter of its data
            at = _NO_DATA[name]
            return Value(TENSOR, _product(_arg(items, at))) if at else (first if first.kind == TENSOR else _NO_TENSOR)
        if name == "torch._utils._rebuild_qtensor":  # an empty quantized tensor of that size, then a view
            elements = _product(_arg(items, 2))
            self.charge(name, min(elements * (first.value if first.kind == STORAGE else _WIDE), _CAP))
            return Value(TENSOR, elements)
        if name.startswith("torch._utils._rebuild_device_tensor_from_"):  # data.to(dtype): a copy
            dtype = _arg(items, 1)
            self.charge(name, min(first.n * _element(dtype.value if dtype.kind == GLOBAL else None), _CAP))
            return Value(TENSOR, first.n)
        if name == "torch._tensor._rebuild_from_type_v2":  # func(*args), then a view as the subclass
            return self.call(first, _arg(items, 2))  # recursion as deep as the tuples nest
        if name.endswith("multiarray._reconstruct"):
            return Value(TENSOR, value="ndarray")  # empty: filled by BUILD
        self.charge(name, _data(args))  # anything else allowed (complex, a device, a numpy scalar): a copy
        if name == "numpy.dtype":  # (a complex's, a numpy scalar's hash: for a key)
            return numpy_dtype(first)
        if name.endswith("multiarray.scalar"):
            return numpy_scalar(first, _arg(items, 1))
        return (name == "builtins.complex" and complex_of(items)) or _NOTHING


def walk_pickle(stream, budget: Budget, *, legacy: bool = False) -> str | None:
    """Walk one pickle of `stream` to its STOP: the cause to refuse it, or None. A pickle this walk
    cannot follow is left to the unpickler, which fails at the same opcode before building more."""
    walk = _Walk(budget, legacy)
    collecting = gc.isenabled()
    gc.disable()  # the walk makes no reference cycles; collections over its millions of objects took 3/4 of its time
    try:
        try:
            for op, arg, _ in pickletools.genops(stream):
                walk.step(op, arg)
        except (ValueError, IndexError, EOFError, MemoryError, OverflowError):  # a 2**62 length field: read() gives up
            pass
        walk.key_work.finish()  # what was built up to there, also where the unpickler fails after
    except Refused as cause:
        return cause.problem
    finally:
        if collecting:
            gc.enable()
    return None
