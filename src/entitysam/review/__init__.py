"""Reviewing, correcting and exporting results of `entitysam segment` (issue 21).

* :mod:`.result`: :class:`ResultFolder`, a validated read-only view of a complete result folder;
* :mod:`.source_frames`: the input frames decoded again (a video through a forward cursor);
* :mod:`.edits`: edit operations (hide, show, delete, merge, split, label) and
  :class:`EditSession` (undo / redo, current id maps and entity table);
* :mod:`.revision`: :func:`save_revision` (atomic new revision with ``edits.json``) and
  :func:`replay_edits`;
* :mod:`.export`: MOTS PNG, CVAT for video 1.1 XML, YouTube-VIS results and COCO-style video
  JSON (`entitysam export`).

Both :class:`ResultFolder` and :class:`EditSession` offer the same reading interface (``frames``,
``size``, ``fps``, ``name``, ``entities``, ``id_map(i)``, ``source_frame(i)``): exports take either.
"""

from .edits import EditSession, check_op
from .result import EntityInfo, ResultFolder
from .revision import replay_edits, save_revision

__all__ = ["ResultFolder", "EntityInfo", "EditSession", "check_op", "save_revision", "replay_edits"]
