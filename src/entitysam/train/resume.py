"""Which checkpoint a training run continues from (`resume=auto|never|PATH`), and its state read
back into a freshly built model."""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import check_state_dict, read_checkpoint, read_state_dict
from ..errors import CheckpointReadError, printable
from ..modeling.entitysam import EntitySAM
from .config import TrainConfig

__all__ = ["find_resume_checkpoint", "resume_state"]


def find_resume_checkpoint(cfg: TrainConfig) -> str | None:
    mode = cfg.resume
    # an override's value is read as YAML: resume=no, =false and =off arrive as the string "False"
    # (str(False)), which was looked for as a checkpoint file ("resume checkpoint not found: False")
    if mode.strip().lower() in ("never", "", "false", "no", "off"):
        return None
    if mode.strip().lower() == "auto":
        pointer = Path(cfg.output_dir) / "last_checkpoint"
        if pointer.is_file():
            path = Path(cfg.output_dir) / pointer.read_text(errors="replace").strip()
            if path.is_file():
                return str(path)
            # the run used to start over from iteration 0 without a word, overwriting the
            # output folder's checkpoints: the pointer says there is one to continue from
            raise CheckpointReadError(f"{pointer} names the checkpoint {path}, which is not a file: restore it, "
                                      "or pass resume=never to start over or resume=PATH")
        return None
    if Path(mode).is_dir():  # was "resume checkpoint not found", of a folder the user could see was there
        raise CheckpointReadError(folder_given(Path(mode), Path(cfg.output_dir)))
    if not Path(mode).is_file():
        raise CheckpointReadError(f"resume checkpoint not found: {mode}")
    return mode


def folder_given(folder: Path, output_dir: Path) -> str:
    """What to say of resume=FOLDER: most likely the output folder of an earlier run, whose
    checkpoint the user meant."""
    message = f"resume={folder} is a folder, not a checkpoint file"
    pointer = folder / "last_checkpoint"
    try:
        named = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    except OSError:
        named = ""
    # the trainer writes a file name; anything else ("../x", "/x") would be suggested as the
    # checkpoint "in" this folder while naming a file elsewhere
    if named and Path(named).name == named and named not in (".", "..") and (folder / named).is_file():
        message += f": pass the checkpoint in it, resume={printable(str(folder / named))} (its last_checkpoint)"
    else:
        found = sorted(p.name for p in folder.glob("*.pth") if p.is_file())
        message += (f": pass a checkpoint in it, e.g. resume={printable(str(folder / found[-1]))}" if found else
                    ", and it holds no checkpoint (*.pth)")
    try:
        same = folder.resolve() == output_dir.resolve()
    except OSError:
        same = False
    if same:
        message += "; to continue this output_dir's run, resume=auto (the default) finds its checkpoint"
    return message


def resume_state(path: str, model: EntitySAM) -> dict:
    """The checkpoint of an earlier run (read weights-only: it never runs code), its weights
    loaded into `model`; anything else (another trainer's checkpoint, weights alone, another
    model) is a CheckpointError naming the file, not a KeyError deep in the trainer."""
    state = read_checkpoint(path)
    parts = {"model": dict, "trainer": dict, "iteration": int}
    lacking = [k for k, kind in parts.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    if lacking or state["iteration"] < 0:
        raise CheckpointReadError(f"cannot resume from {path}: not a checkpoint written by `entitysam train` "
                                  f"(no {' / '.join(map(repr, lacking)) or 'valid iteration'} entry); to start from "
                                  "its weights, pass it as model.weights with resume=never")
    weights = read_state_dict(state["model"])  # tensors only, the DDP prefix removed
    check_state_dict(model, weights, source=path)
    model.load_state_dict(weights, strict=True)
    return state
