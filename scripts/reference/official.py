"""Run the official EntitySAM evaluation flow on CPU, float32, with make_weights.py weights.

Never imported by the package. Needs two local checkouts (nothing of theirs is committed):

    ENTITYSAM_OFFICIAL_DIR  ymq2017/entitysam at cdbf6af7231c7b60670d3f456edcea234ff46ac8
    ENTITYSAM_DINOV2_DIR    facebookresearch/dinov2 at b8931f7bf91576930313be2c6d6af376033b35f0

and, in the Python that runs this, hydra-core, omegaconf and iopath (the official code's
imports) besides torch, numpy, Pillow and scipy.

The official code is run unmodified; what the CPU needs is patched from outside, at import
time, and none of it changes a floating-point operation of the model:

1. Stub modules for imports the inference never uses: `detectron2.structures` (type names
   imported by the predictor), `panopticapi.utils` (colour ids, used only when writing PNGs),
   `torchvision` (imported at the top of `train/utils/comm.py`, whose mask-quality function
   is plain torch) and the training classes the predictor's `__init__` builds because a fresh
   module is in training mode (matcher, criterion, target preparation: no parameters, no buffers,
   never called in eval). `train.utils.comm` itself is loaded for real.
2. DINOv2 comes from the local checkout (`torch.hub.load(dir, name, source="local",
   pretrained=False)`) instead of GitHub; its weights are overwritten by the checkpoint.
3. `sam2.modeling.sam.transformer(_query_iou).ALLOW_ALL_KERNELS = True`: without a GPU the
   official `torch.backends.cuda.sdp_kernel` flags would force the math SDPA kernel on CPU; the
   default CPU kernel is what the public fixtures used (their meta.json "deviations"). Kernel
   choice changes rounding only (README of shared/reference, table B).
4. Hole filling: the CUDA extension `sam2._C.get_connected_componnets` is replaced by
   `scipy.ndimage.label` with 8-connectivity and the per-pixel component area: the same
   labels-are-positive / area-per-pixel contract, integer arithmetic only. Without it the official
   code silently skips hole filling.
5. The bfloat16 memory bank (official: `maskmem_features.to(torch.bfloat16)`) is cast back to
   float32 on entry to `memory_attention` (a pre-hook): under CUDA autocast the official code
   mixes bf16 activations and fp32 weights in `F.linear`, which CPU torch refuses outside
   autocast. bf16 -> fp32 is exact, so the values are the official bf16-rounded ones.
6. The model and the inference state live on the CPU (`device="cpu"`); the eval script's
   `torch.cuda.*` calls and CUDA autocast are left out (autocast is inactive on a CPU anyway).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

VARIANTS = {  # variant -> (official model config, mask decoder depth), as eval_vipseg_entity_seg.py
    "vits": ("configs/sam2.1_hiera_s.yaml", 4),
    "vitl": ("configs/sam2.1_hiera_l.yaml", 8),
}
NUM_WARMUP = 3  # progress_order = [0, 0, 0] + range(n)


class MissingCheckout(SystemExit):
    """A checkout the harness needs is not configured (one-line message, exit status 2)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def checkout(env: str, what: str, marker: str) -> Path:
    value = os.environ.get(env)
    if not value:
        raise MissingCheckout(f"set {env} to a local checkout of {what}")
    path = Path(value).expanduser().resolve()
    if not (path / marker).exists():
        raise MissingCheckout(f"{env}={path} is not a checkout of {what} ({marker} is missing)")
    return path


def official_dir() -> Path:
    return checkout("ENTITYSAM_OFFICIAL_DIR", "ymq2017/entitysam @ cdbf6af", "sam2/sam2_video_query_iou_predictor.py")


def dinov2_dir() -> Path:
    return checkout("ENTITYSAM_DINOV2_DIR", "facebookresearch/dinov2 @ b8931f7", "hubconf.py")


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def install_stubs(official: Path) -> None:
    """Patch 1: modules the inference imports but never uses."""
    import torch

    class Unused:
        def __init__(self, *args, **kwargs):
            pass

    class UnusedModule(torch.nn.Module):  # holds no parameters or buffers
        def __init__(self, *args, **kwargs):
            super().__init__()

    _stub("detectron2")
    _stub("detectron2.structures", Boxes=Unused, ImageList=Unused, Instances=Unused, BitMasks=Unused)
    _stub("panopticapi")
    _stub("panopticapi.utils", IdGenerator=Unused, rgb2id=lambda color: 0)
    _stub("torchvision")
    train = _stub("train", VideoHungarianMatcherUniClsag=UnusedModule, VideoSetCriterionClsagIoU=UnusedModule)
    train.__path__ = [str(official / "train")]  # so `train.utils.comm` is the real file
    _stub("train.prepare_targets", PrepareTargets=Unused)


def connected_components_cpu(mask):
    """Patch 4: `sam2._C.get_connected_componnets` on the CPU.

    mask [N, 1, H, W] uint8 -> (labels, areas) int32 [N, 1, H, W]: 8-connected component labels
    (> 0 on foreground, 0 on background) and each foreground pixel's component area.
    """
    import torch
    from scipy import ndimage

    m = mask.cpu().numpy().astype(bool)
    labels = np.zeros(m.shape, dtype=np.int32)
    areas = np.zeros(m.shape, dtype=np.int32)
    eight = np.ones((3, 3), dtype=bool)
    for i in range(m.shape[0]):
        lab, count = ndimage.label(m[i, 0], structure=eight)
        sizes = np.bincount(lab.ravel(), minlength=count + 1).astype(np.int32)
        sizes[0] = 0
        labels[i, 0] = lab
        areas[i, 0] = sizes[lab]
    return torch.from_numpy(labels), torch.from_numpy(areas)


def import_official(official: Path, dinov2: Path):
    """Put the official code on sys.path with patches 1-4; returns its `build_sam` module."""
    import torch

    install_stubs(official)
    sys.path.insert(0, str(official))
    import sam2.modeling.sam.transformer as transformer
    import sam2.modeling.sam.transformer_query_iou as transformer_query_iou
    import sam2.utils.misc as misc
    from sam2 import build_sam

    transformer.ALLOW_ALL_KERNELS = True  # patch 3
    transformer_query_iou.ALLOW_ALL_KERNELS = True
    misc.get_connected_components = connected_components_cpu  # patch 4 (looked up at call time)

    hub_load = torch.hub.load

    def local_dinov2(repo, name, *args, **kwargs):  # patch 2
        if repo == "facebookresearch/dinov2":
            return hub_load(str(dinov2), name, source="local", pretrained=False)
        return hub_load(repo, name, *args, **kwargs)

    torch.hub.load = local_dinov2
    return build_sam


def load_eval_module(official: Path):
    """eval/eval_vipseg_entity_seg.py as a module (for its post-processing function)."""
    spec = importlib.util.spec_from_file_location("official_eval", official / "eval" / "eval_vipseg_entity_seg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def memory_to_float32(module, args, kwargs):
    """Patch 5: forward pre-hook on memory_attention: the bf16 memory bank back to float32."""
    import torch

    memory = kwargs.get("memory")
    if memory is None or memory.dtype != torch.bfloat16:
        return None
    kwargs = dict(kwargs)
    kwargs["memory"] = kwargs["memory"].float()
    return args, kwargs


def build_model(variant: str, checkpoint: Path):
    """The official predictor, built as the eval script does (on CPU), with patch 5."""
    official, dinov2 = official_dir(), dinov2_dir()
    build_sam = import_official(official, dinov2)
    model_cfg, depth = VARIANTS[variant]
    predictor = build_sam.build_sam2_video_query_iou_predictor(model_cfg, str(checkpoint), device="cpu",
                                                               mask_decoder_depth=depth)
    predictor.memory_attention.register_forward_pre_hook(memory_to_float32, with_kwargs=True)
    return predictor


def frame_names(frames_dir: Path) -> list[str]:
    """The eval script's frame list: sorted JPEG names."""
    return [p for p in sorted(os.listdir(frames_dir)) if os.path.splitext(p)[-1] in (".jpg", ".jpeg", ".JPG", ".JPEG")]


def run(frames_dir: Path, variant: str, checkpoint: Path, max_steps: int | None = None, on_step=None,
        recording=contextlib.nullcontext) -> dict:
    """The official flow of eval_vipseg_entity_seg.py on one video, stopped after `max_steps`.

    Returns arrays: logits [S, Q, 256, 256] float32 (yielded, hole-filled), eiou [S, Q],
    points [S, Q, 2] (`sampled_point_coords` after each step), source_frame [S], is_padding [S],
    out_size [2], step_times_s [S]; and, when every step ran, video_scores [Q], panoptic_ids
    [n, H, W] int32, segment_ids [K], segment_query_index [K]. on_step(partial arrays) is called
    after each step (the harness saves partial runs: a later step can take minutes). `recording()`
    is entered around the reading of the frames and the steps (kernel_trace.py's ATen trace).
    """
    import torch
    from PIL import Image

    predictor = build_model(variant, checkpoint)
    names = frame_names(frames_dir)
    n = len(names)
    progress_order = [0] * NUM_WARMUP + list(range(n))
    padding_mask = [True] * NUM_WARMUP + [False] * n
    with recording():
        state = predictor.init_state(video_path=str(frames_dir), progress_order=progress_order)
        predictor.reset_state(state)
        width, height = Image.open(frames_dir / names[0]).convert("RGB").size
        out_size = (height, width)

        logits, eious, points, times = [], [], [], []
        total = len(progress_order) if max_steps is None else min(max_steps, len(progress_order))
        start = time.time()
        with torch.inference_mode():
            for _, _, step_logits, step_eiou in predictor.propagate_in_video(state, start_frame_idx=0):
                logits.append(step_logits.float().clone())
                eious.append(step_eiou.float().clone())
                points.append(predictor.sampled_point_coords.detach().float().reshape(-1, 2).clone())
                times.append(time.time() - start)
                print(f"official step {len(logits) - 1}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
                start = time.time()
                if on_step is not None and len(logits) < total:
                    on_step(arrays(logits, eious, points, progress_order, padding_mask, out_size, times))
                if len(logits) == total:
                    break
    with torch.inference_mode():
        out = arrays(logits, eious, points, progress_order, padding_mask, out_size, times)
        if total == len(progress_order):  # the rest of the eval script (minus writing PNG/JSON)
            evaluation = load_eval_module(official_dir())
            pred_masks = torch.cat(logits, dim=1)[:, ~torch.tensor(padding_mask)]
            scores = torch.stack(eious).mean(0)
            torch.manual_seed(0)
            result = evaluation.inference_video_vps_save_results(scores, None, pred_masks, out_size)
            out["video_scores"] = scores.numpy()
            out["panoptic_ids"] = result["pred_masks"].numpy().astype(np.int32)
            out["segment_ids"] = np.array([s["id"] for s in result["segments_infos"]], dtype=np.int32)
            out["segment_query_index"] = np.array([int(i) for i in result["pred_ids"]], dtype=np.int32)
    return out


def arrays(logits, eious, points, progress_order, padding_mask, out_size, times) -> dict:
    """The per-step lists of `run` as the arrays of a saved run (steps so far)."""
    import torch

    s = len(logits)
    return {
        "logits": torch.cat(logits, dim=1).permute(1, 0, 2, 3).numpy(),
        "eiou": torch.stack(eious).numpy(),
        "points": torch.stack(points).numpy(),
        "source_frame": np.array(progress_order[:s], dtype=np.int32),
        "is_padding": np.array(padding_mask[:s]),
        "out_size": np.array(out_size, dtype=np.int32),
        "step_times_s": np.array(times),
    }


def postprocess(scores: np.ndarray, logits: np.ndarray, out_size) -> dict:
    """The official `inference_video_vps_save_results` on given inputs (torch.manual_seed(0) first):
    {"panoptic_ids" [n, H, W] int32, "segment_ids" [K], "segment_query_index" [K]}."""
    import torch

    official, dinov2 = official_dir(), dinov2_dir()
    if "sam2" not in sys.modules:
        import_official(official, dinov2)
    evaluation = load_eval_module(official)
    torch.manual_seed(0)
    result = evaluation.inference_video_vps_save_results(torch.from_numpy(scores), None, torch.from_numpy(logits),
                                                         tuple(int(v) for v in out_size))
    return {
        "panoptic_ids": result["pred_masks"].numpy().astype(np.int32),
        "segment_ids": np.array([s["id"] for s in result["segments_infos"]], dtype=np.int32),
        "segment_query_index": np.array([int(i) for i in result["pred_ids"]], dtype=np.int32),
    }


if __name__ == "__main__":
    print(json.dumps({"official": str(official_dir()), "dinov2": str(dinov2_dir())}))
