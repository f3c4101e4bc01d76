"""Which checkpoint a training run continues from (`resume=auto|never|PATH`), and its state read
back into a freshly built model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from ..checkpoints import check_state_dict, read_checkpoint, read_state_dict
from ..errors import CheckpointReadError, printable
from ..modeling.entitysam import EntitySAM
from .config import TrainConfig
from .setup import lr_factor

__all__ = ["check_trainer_state", "find_resume_checkpoint", "load_trainer_state", "resume_state", "trainer_state"]


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


def check_trainer_state(trainer: dict, optimizer, max_iter: int) -> str | None:
    """Why the trainer state of a checkpoint (its "trainer" entry) cannot be resumed by `optimizer`
    (this run's, its parameters in place), or None. A hostile or damaged file crashed the first
    step with a traceback (moments of another shape), took gigabytes (a moment that is a tiny
    tensor expanded to billions of elements), or trained silently wrong (its groups' settings:
    maximize=True did gradient ascent); its RNG or schedule were an OverflowError."""
    saved = trainer.get("optimizer")
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        return "no optimizer state"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, moments in saved["state"].items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(moments, dict):
            return f"an optimizer state of no parameter of this model ({printable(repr(index), 40)})"
        for key, value in moments.items():
            if key == "step":
                step = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
                if not isinstance(step, (int, float)) or not math.isfinite(step) or step < 0:
                    return f"parameter {index}'s optimizer step is not a count ({printable(repr(value), 40)})"
            elif key in ("exp_avg", "exp_avg_sq"):
                if not isinstance(value, torch.Tensor) or value.layout != torch.strided or \
                        not value.is_floating_point() or value.is_complex() or value.shape != params[index].shape:
                    return f"parameter {index}'s {key} is not a real tensor of its shape {tuple(params[index].shape)}"
                if not value.is_contiguous() or not bool(torch.isfinite(value).all()):
                    return f"parameter {index}'s {key} is not a plain tensor of finite numbers"
            else:  # (max_exp_avg_sq: amsgrad, which this run does not use)
                return f"parameter {index}'s optimizer state has {printable(repr(key), 40)}, which this run does not use"
    scheduler = trainer.get("scheduler")
    last = scheduler.get("last_epoch") if isinstance(scheduler, dict) else None
    if type(last) is not int or not 0 <= last <= max_iter:
        return f"its schedule's iteration is not one of 0..{max_iter} ({printable(repr(last), 40)})"
    python = trainer.get("rng", {}).get("python") if isinstance(trainer.get("rng"), dict) else None
    if python is not None:
        ok = (isinstance(python, tuple) and len(python) == 3 and python[0] == 3 and isinstance(python[1], tuple)
              and len(python[1]) == 625 and all(type(v) is int and 0 <= v < 2**32 for v in python[1])
              and python[1][-1] <= 624)
        if not ok:
            return "its Python random state is not one Python writes"
    return None


def trainer_state(iteration: int, optimizer, scheduler, scaler, world_size: int, config_json: str) -> dict:
    """The "trainer" entry of a checkpoint: what `load_trainer_state` continues from."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "iteration": iteration,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "grad_scaler": scaler.state_dict(),
        "rng": rng,
        "world_size": world_size,
        "config": config_json,
    }


def load_trainer_state(trainer: dict, optimizer, scheduler, scaler, cfg: TrainConfig) -> None:
    """A checkpoint's "trainer" entry into this run's optimizer, schedule, scaler and RNGs;
    ValueError (and torch's errors) when it does not fit (see check_trainer_state)."""
    if problem := check_trainer_state(trainer, optimizer, cfg.solver.max_iter):
        raise ValueError(problem)
    # this run's settings (LR, weight decay, ...), not the checkpoint's: both state dicts hold
    # the values the earlier run was started with, so a rerun with a lower solver.base_lr (the
    # remedy the divergence error gives) trained on at the old one; and a file's own (maximize)
    # trained wrong. Of the schedule only its iteration is taken.
    mine = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.last_epoch = trainer["scheduler"]["last_epoch"]
    scheduler._step_count = scheduler.last_epoch + 1
    factor = lr_factor(scheduler.last_epoch, cfg)
    for group, values in zip(optimizer.param_groups, mine):
        group.update(values, lr=values["initial_lr"] * factor)
    scheduler.base_lrs = [values["initial_lr"] for values in mine]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if trainer.get("grad_scaler") and scaler.is_enabled():
        scaler.load_state_dict(trainer["grad_scaler"])
    rng = trainer.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "python" in rng:
        random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
