"""Looking up the entity ids of an id map (up to 2**24 - 1) in a short sorted list of ids.

Ids below :data:`DENSE_IDS` (the common case) are looked up by one gather in a table indexed by
the id (256 kB of int32 at most); larger ones by binary search in the list, for their pixels only,
so no table as large as the largest id is ever made. The result folder (positions of ids, -1 for
an unlisted one) and the exports (new ids, 0 for an entity not exported) both look ids up here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DENSE_IDS", "dense_table", "map_ids"]

DENSE_IDS = 1 << 16


def dense_table(keys: np.ndarray, values: np.ndarray, missing: int, top: int) -> np.ndarray:
    """table[id] = values[k] where keys[k] == id, `missing` for unlisted ids, for the ids below
    min(top, DENSE_IDS): what :func:`map_ids` gathers from (kept by a caller that looks up many maps)."""
    table = np.full(max(1, min(top, DENSE_IDS)), missing, dtype=values.dtype)
    listed = keys < len(table)
    table[keys[listed]] = values[listed]
    return table


def map_ids(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, missing: int = 0,
            table: np.ndarray | None = None) -> np.ndarray:
    """[H, W] ids -> values[k] where ids == keys[k], `missing` where the id is not among `keys`.
    keys: [K] sorted, unique, non-negative; values: [K] (their dtype is the output's).
    table: :func:`dense_table` of the same keys, values and missing (made here when None)."""
    ids = np.asarray(ids)
    top = int(ids.max(initial=0))
    if table is None:
        table = dense_table(keys, values, missing, top + 1)
    if top < len(table):
        return table[ids]
    large = ids >= len(table)
    out = table[np.minimum(ids, len(table) - 1)]
    wanted = ids[large]
    if len(keys):
        k = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        out[large] = np.where(keys[k] == wanted, values[k], missing)
    else:
        out[large] = missing
    return out
