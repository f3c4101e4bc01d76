"""Where do the official code and this project first round differently? Step 0 (or `--step K`,
a warm-up step of frame 0, K <= 3) of both, with a forward hook on every module of the same name,
compared in the official execution order.

    ENTITYSAM_OFFICIAL_DIR=... ENTITYSAM_DINOV2_DIR=... PYTHONPATH=src \\
        python scripts/reference/intermediates.py --frames DIR [--threads 2] [--mode exact] [--step K]

Both models run in this one process (same threads), official first. For each module called in
both, the first call's first output tensor is compared on its first batch row (the official model
repeats step-0 features to 50 rows where this project keeps one), at most 4M values of it. Prints
every compared module in official call order with bit-identical / max |diff|; the first
differing leaf module is where to look.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import official  # noqa: E402

LIMIT = 4_000_000


def first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


STEP = [0]  # the step running now (set by the drivers below)


def record(model, store: dict, order: list, step: int):
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, out, name=name):
            if name in store or STEP[0] != step:
                return
            t = first_tensor(out)
            if t is None or not t.is_floating_point():
                return
            row = t[0] if t.dim() >= 3 else t
            store[name] = (tuple(t.shape), row.detach().float().flatten()[:LIMIT].clone())
            order.append(name)

        handles.append(module.register_forward_hook(hook))
    return handles


def main() -> None:
    import torch
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", required=True, type=Path)
    parser.add_argument("--variant", default="vits")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="exact", choices=("exact", "default"))
    parser.add_argument("--step", type=int, default=0, choices=range(4), help="the step compared (0-3: frame 0)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state = harness.make_state_dict(args.variant, args.seed)

    theirs, their_order = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "w.pth"
        torch.save({"model": state}, ckpt)
        predictor = official.build_model(args.variant, ckpt)
    record(predictor, theirs, their_order, args.step)
    names = official.frame_names(args.frames)
    st = predictor.init_state(video_path=str(args.frames), progress_order=[0] * (args.step + 1))  # frame 0 again
    predictor.reset_state(st)
    with torch.inference_mode():
        steps = predictor.propagate_in_video(st, start_frame_idx=0)  # one step per item
        for k in range(args.step + 1):
            STEP[0] = k
            next(steps)
    del predictor, st, steps

    from entitysam.checkpoints import load_entitysam
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.inference.tracker import EntityTracker

    ours, our_order = {}, []
    model = load_entitysam(state)
    record(model, ours, our_order, args.step)
    image = preprocess_frame(Image.open(args.frames / names[0]), model.cfg.image_size)
    tracker = EntityTracker(model, exact=args.mode == "exact")
    for k in range(args.step + 1):
        STEP[0] = k
        tracker.step(0, image, is_warmup=True)

    print(f"{len(their_order)} official modules, {len(our_order)} ours; compared in official order:")
    for name in their_order:
        if name not in ours:
            continue
        (ts, tv), (os_, ov) = theirs[name], ours[name]
        n = min(len(tv), len(ov))
        if len(tv) != len(ov):
            note = f" (shapes {ts} vs {os_}, first {n} values)"
        else:
            note = ""
        d = (tv[:n] - ov[:n]).abs()
        status = "identical" if bool((d == 0).all()) else f"max {d.max():.2e} median {d.median():.2e}"
        print(f"  {name}: {status}{note}")
    only = [n for n in our_order if n not in theirs]
    print(f"ours only: {only[:40]}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
