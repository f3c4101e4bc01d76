"""Edits of a result: plain JSON-able operations, validated, applied to an :class:`EditSession`.

Operations (dicts; :func:`check_op` validates one and returns its normalised copy)::

    {"op": "hide",   "ids": [a, ...]}            shown greyed by viewers, kept everywhere, "hidden": true
    {"op": "show",   "ids": [a, ...]}            undo a hide
    {"op": "delete", "ids": [a, ...]}            the entities' pixels become 0 (no entity)
    {"op": "merge",  "ids": [a, b, ...], "into": a}   every listed entity becomes `into`
    {"op": "split",  "id": a, "frame": f, "new_id": n?}  frames >= f of `a` become entity n
                                                 (default: one above every id used so far; past
                                                 2**24 - 1, the smallest id never used)
    {"op": "label",  "id": a, "text": "..."}     free text ("" removes the label)

Ids are the *current* ids (after the earlier operations). The session keeps the original result
untouched: an id map is the original PNG passed through a lookup table (position of an original
id in ``result.ids`` -> current id) that depends on the frame only through the splits, so it
costs one gather per frame; the table is as long as the entity list, whatever the ids.

Attributes of the entity an operation makes: a merge keeps the score, query index, label and
hidden flag of `into`; a split gives the new entity those of the split one. Ids of deleted
entities and split-off ids are never reused.
"""

from __future__ import annotations

import bisect
import copy
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..argtypes import InvalidArgumentError
from ..errors import EditError
from ..io import idpng
from ..io.idpng import MAX_ID
from .records import MAX_LABEL, entity_stats, label_problem
from .result import EntityInfo, ResultFolder

__all__ = ["OPS", "check_op", "EditSession", "check_view"]

OPS = ("hide", "show", "delete", "merge", "split", "label")
_SHOWN = 10  # ids named in a message (the rest counted: a list of millions makes no message)


def _listed(ids: Sequence[int]) -> str:
    """The first _SHOWN of `ids`, the rest counted: a message about a list of 100k ids was 300-700 kB."""
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(map(str, ids[:_SHOWN])) + more


def _cut(text: str, limit: int = 80) -> str:
    """`text` for a message: at most `limit` characters, then how long it was. An edit of up to
    1 MiB may carry an op name, field names or an integer of thousands of digits, and a message
    quoting them whole was as long (a 1 MB line in the viewer's status bar)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _shown(value: Any) -> str:
    """repr(value) for a message (:func:`_cut`; a huge integer by its number of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 60:
        return f"an integer of {len(str(abs(value)))} digits"
    return _cut(repr(value))


def _int_id(value: Any, op: str, what: str = "id") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_ID:
        raise EditError(f"{op}: {what} must be an entity id (an integer in [1, {MAX_ID}]), got {_shown(value)}")
    return int(value)


def check_op(op: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised copy of one operation, or EditError naming what is wrong (its form only:
    whether the ids exist is checked when it is applied)."""
    if not isinstance(op, Mapping):
        raise EditError(f"an edit must be an object like {{'op': 'hide', 'ids': [1]}}, got {_shown(op)}")
    kind = op.get("op")
    if kind not in OPS:
        raise EditError(f"unknown edit op {_shown(kind)}: choose from {', '.join(OPS)}")
    fields = {"hide": {"ids"}, "show": {"ids"}, "delete": {"ids"}, "merge": {"ids", "into"},
              "split": {"id", "frame", "new_id"}, "label": {"id", "text"}}[kind]
    extra = set(op) - fields - {"op"}
    if extra:
        raise EditError(f"{kind}: unknown field(s) {_listed(sorted(_cut(str(k), 40) for k in extra))}")
    out: dict[str, Any] = {"op": kind}
    if "ids" in fields:
        ids = op.get("ids")
        if not isinstance(ids, (list, tuple)) or not ids:
            raise EditError(f"{kind}: ids must be a non-empty list of entity ids, got {ids!r:.80}")
        out["ids"] = [_int_id(i, kind) for i in ids]
        if len(set(out["ids"])) != len(out["ids"]):
            twice = sorted(i for i, n in Counter(out["ids"]).items() if n > 1)
            raise EditError(f"{kind}: ids repeat an entity: {_listed(twice)} ({len(out['ids'])} ids given)")
    if kind == "merge":
        out["into"] = _int_id(op.get("into"), kind, "into")
        if len(out["ids"]) < 2 or out["into"] not in out["ids"]:
            raise EditError(f"merge: ids must list at least two entities, `into` among them "
                            f"(got ids {_listed(out['ids'])}, into {out['into']})")
    if kind in ("split", "label"):
        out["id"] = _int_id(op.get("id"), kind)
    if kind == "split":
        frame = op.get("frame")
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 1:
            raise EditError(f"split: frame must be a frame position >= 1, got {_shown(frame)}")
        out["frame"] = int(frame)
        if op.get("new_id") is not None:
            out["new_id"] = _int_id(op["new_id"], kind, "new_id")
    if kind == "label":
        text = op.get("text")
        if label_problem(text):
            raise EditError(f"label: text must be a string of at most {MAX_LABEL} printable characters, got "
                            f"{text!r:.80} ({label_problem(text)})")
        out["text"] = text
    return out


def _new_id(used: set[int]) -> int:
    """The id a split gives by default: one above every id in `used` (ids grow in order of
    creation), or, when that is past MAX_ID (the PNGs hold 24-bit ids), the smallest id never used."""
    top = max(used | {0}) + 1
    if top <= MAX_ID:
        return top
    taken = sorted(i for i in used if i >= 1)
    for expected, i in enumerate(taken, start=1):
        if i != expected:
            return expected
    if len(taken) < MAX_ID:
        return len(taken) + 1
    raise EditError(f"split: every entity id from 1 to {MAX_ID} is taken")


class _State:
    """What the applied operations made: per original id, the frames where its pixels belong to
    which current id (``pieces[o] = [(start_frame, current_id), ...]``, starts increasing, 0 =
    deleted), and the attributes of each current entity."""

    def __init__(self, result: ResultFolder):
        self.pieces: dict[int, list[tuple[int, int]]] = {e.id: [(0, e.id)] for e in result.entities}
        self.attrs: dict[int, dict[str, Any]] = {
            e.id: {"score": e.score, "query_index": e.query_index, "label": e.label, "hidden": e.hidden}
            for e in result.entities}
        self.used = set(self.attrs)  # ids ever given: never reused

    def current(self, original: int, t: int) -> int:
        pieces = self.pieces[original]
        k = bisect.bisect_right([s for s, _ in pieces], t) - 1
        return pieces[k][1]

    def rename(self, old: set[int], new: int, from_frame: int = 0) -> None:
        """Pixels of the current ids `old` at frames >= from_frame become `new`."""
        for o, pieces in self.pieces.items():
            if not any(c in old for _, c in pieces):
                continue
            out: list[tuple[int, int]] = []
            for k, (start, cur) in enumerate(pieces):
                stop = pieces[k + 1][0] if k + 1 < len(pieces) else None
                if cur in old and start < from_frame and (stop is None or stop > from_frame):
                    out += [(start, cur), (from_frame, new)]  # the piece is cut at from_frame
                elif cur in old and start >= from_frame:
                    out.append((start, new))
                else:
                    out.append((start, cur))
            merged: list[tuple[int, int]] = []
            for start, cur in out:  # neighbours with one id are one piece
                if not merged or merged[-1][1] != cur:
                    merged.append((start, cur))
            self.pieces[o] = merged


class EditSession:
    """The original :class:`ResultFolder` plus the operations applied to it, with undo / redo.

    ``ops``: the applied operations (normalised); ``entities``: the current table
    (:class:`EntityInfo` by id, deleted ones absent, hidden ones with ``hidden=True``);
    :meth:`id_map`: a frame's current ids; :meth:`id_lookup`: position of an original id in ``result.ids`` -> current id.
    """

    def __init__(self, result: ResultFolder, ops: Sequence[Mapping[str, Any]] = ()):
        if not isinstance(result, ResultFolder):
            raise InvalidArgumentError(f"an EditSession edits a ResultFolder (ResultFolder.open(path)), got "
                                       f"{_cut(repr(result))} ({type(result).__name__})")
        if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Iterable):
            raise InvalidArgumentError(f"ops must be a list of edit operations, got {_cut(repr(ops))}")
        self.result = result
        self.ops: list[dict[str, Any]] = []
        self._redo: list[dict[str, Any]] = []
        self._state = _State(result)
        self._table: list[EntityInfo] | None = None
        self._lut_cache: dict[tuple, np.ndarray] = {}
        for op in ops:
            self.apply(op)
        self._redo.clear()

    # ------------------------------------------------------------------ operations
    def apply(self, op: Mapping[str, Any]) -> dict[str, Any]:
        """Validate `op` against the current entities and apply it (clears the redo list).
        Returns the normalised operation. Raises EditError (nothing changed) when it does not apply."""
        op = check_op(op)
        state = copy.deepcopy(self._state)
        self._apply_to(state, op)
        self._state = state
        self.ops.append(op)
        self._redo.clear()
        self._changed()
        return op

    def undo(self) -> dict[str, Any] | None:
        """Take back the last operation (replays the others on the original); returns it, or None."""
        if not self.ops:
            return None
        op = self.ops.pop()
        self._redo.append(op)
        state = _State(self.result)
        for done in self.ops:
            self._apply_to(state, done)
        self._state = state
        self._changed()
        return op

    def redo(self) -> dict[str, Any] | None:
        """Apply again the last operation undone; returns it, or None."""
        if not self._redo:
            return None
        op = self._redo.pop()
        redo = self._redo
        self._redo = []
        self.apply(op)
        self._redo = redo
        return op

    @property
    def can_undo(self) -> bool:
        return bool(self.ops)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _existing(self, state: _State, ids: Sequence[int], kind: str) -> None:
        missing = [i for i in ids if i not in state.attrs]
        if missing:
            raise EditError(f"{kind}: no entity {_listed(missing)} (deleted, merged away or never there)")

    def _apply_to(self, state: _State, op: dict[str, Any]) -> None:
        kind = op["op"]
        ids = op.get("ids") or [op["id"]]
        self._existing(state, ids, kind)
        if kind in ("hide", "show"):
            for i in ids:
                state.attrs[i]["hidden"] = kind == "hide"
        elif kind == "label":
            state.attrs[op["id"]]["label"] = op["text"] or None
        elif kind == "delete":
            state.rename(set(ids), 0)
            for i in ids:
                del state.attrs[i]
        elif kind == "merge":
            into = op["into"]
            others = set(ids) - {into}
            state.rename(others, into)
            for i in others:
                del state.attrs[i]
        elif kind == "split":
            self._split(state, op)

    def _split(self, state: _State, op: dict[str, Any]) -> None:
        a, f = op["id"], op["frame"]
        present = [t for t, areas in enumerate(self.result.frame_areas)
                   if any(state.current(o, t) == a for o in areas)]
        if not present or not present[0] < f <= present[-1]:
            span = f"frames {present[0]}-{present[-1]}" if present else "no frame"
            raise EditError(f"split: entity {a} is present in {span}; the split frame {_shown(f)} must leave it "
                            "frames on both sides")
        new = op.get("new_id")
        if new is None:
            new = _new_id(state.used | set(self.result.ids.tolist()))
            op["new_id"] = new  # recorded: a replay gives the same id
        elif new in state.used:
            raise EditError(f"split: new_id {new} is already used by an entity")
        state.rename({a}, new, from_frame=f)
        state.attrs[new] = dict(state.attrs[a])
        state.used.add(new)

    def _changed(self) -> None:
        self._table = None
        self._lut_cache.clear()

    # ------------------------------------------------------------------ the current result
    @property
    def entities(self) -> list[EntityInfo]:
        """The current entities by id (deleted ones absent), statistics recomputed from the
        per-frame areas of the original."""
        if self._table is None:
            areas = [self._frame_areas(t) for t in range(self.result.num_frames)]
            stats = entity_stats(areas)
            table = []
            for sid, attrs in sorted(self._state.attrs.items()):
                first, last, count, area = stats.get(sid, (None, None, 0, 0))
                table.append(EntityInfo(id=sid, score=attrs["score"], first_frame=first, last_frame=last,
                                        num_frames=count, area=area, label=attrs["label"],
                                        hidden=attrs["hidden"], query_index=attrs["query_index"]))
            self._table = table
        return list(self._table)

    def _frame_areas(self, t: int) -> dict[int, int]:
        out: dict[int, int] = {}
        for o, area in self.result.frame_areas[t].items():
            cur = self._state.current(o, t) if o in self._state.pieces else o
            if cur:
                out[cur] = out.get(cur, 0) + area
        return out

    def id_lookup(self, frame: int = 0) -> np.ndarray:
        """[len(result.ids)] uint32: entry k is the current id, at frame position `frame`, of the
        original id ``result.ids[k]`` (the sorted ids of panoptic.json, 0 first; 0 = deleted / no
        entity). Indexed by position, not by id, so it stays as small as the entity list whatever
        the ids (up to 2**24 - 1). Without splits it is the same for every frame."""
        t = self.result.check_frame(frame)
        key = tuple(self._state.current(o, t) for o in sorted(self._state.pieces))
        lut = self._lut_cache.get(key)
        if lut is None:
            pieces = self._state.pieces
            lut = np.array([self._state.current(int(o), t) if int(o) in pieces else int(o)
                            for o in self.result.ids], dtype=np.uint32)
            self._lut_cache[key] = lut
        return lut

    def lookup_segments(self) -> list[dict[str, Any]]:
        """The lookup as ``[{"start", "stop", "lookup": [current id per position in result.ids]}]``
        over consecutive frame ranges where it is constant (what a client needs to remap id maps)."""
        out: list[dict[str, Any]] = []
        for t in range(self.result.num_frames):
            lut = self.id_lookup(t).tolist()
            if out and out[-1]["lookup"] == lut:
                out[-1]["stop"] = t + 1
            else:
                out.append({"start": t, "stop": t + 1, "lookup": lut})
        return out

    def id_map(self, i: int) -> np.ndarray:
        """The current [H, W] uint32 ids of frame position `i` (hidden entities included)."""
        original = idpng.decode_ids(self.result.id_rgb(i))
        return self.id_lookup(i)[self.result.id_index(original, i)]  # raises for ids panoptic.json does not list

    # the same reading interface as ResultFolder (exports take either)
    @property
    def frames(self) -> list[dict[str, Any]]:
        return self.result.frames

    @property
    def size(self) -> tuple[int, int]:
        return self.result.size

    @property
    def fps(self) -> float:
        return self.result.fps

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def num_frames(self) -> int:
        return self.result.num_frames

    def source_frame(self, i: int) -> np.ndarray | None:
        return self.result.source_frame(i)


def check_view(view: Any, what: str = "view") -> ResultFolder | EditSession:
    """`view` is what the writers of a result read (a ResultFolder or an EditSession), else
    InvalidArgumentError: anything else would fail deep inside with an AttributeError."""
    if not isinstance(view, (ResultFolder, EditSession)):
        raise InvalidArgumentError(f"{what} must be a ResultFolder (ResultFolder.open(path)) or an EditSession, got "
                                   f"{_cut(repr(view))} ({type(view).__name__})")
    return view
