"""Agreement of the CPU bfloat16 mode with float32 on the reference clip.

    python benchmarks/precision.py [--fixture ../shared/reference/golden-vits] [--frames all]
                                   [--mode attention|all]

Runs the fixture's frames with its `make_weights.py` checkpoint in bfloat16 and compares every
step with the float32 golden outputs (which our float32 path matches to 2.5e-4 of mask signs):
fraction of identical low-res mask pixels (sign of the logits), max |eIoU| difference, max point
difference, and the wall time of each step against the official float32 code's.
`--mode attention` (default, what `--dtype bfloat16` does on CPU) runs only the memory attention
in bfloat16; `--mode all` runs the whole model under bfloat16 autocast.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", type=Path, default=REFERENCE / "golden-vits")
    parser.add_argument("--frames", default="1", help="leading real frames to run, or 'all'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("attention", "all"), default="attention")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from entitysam.checkpoints import load_entitysam
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.inference.tracker import EntityTracker

    torch.set_num_threads(args.threads)
    meta = json.loads((args.fixture / "meta.json").read_text())
    golden = np.load(args.fixture / "golden.npz")
    spec = importlib.util.spec_from_file_location("make_weights", REFERENCE / "make_weights.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    manifest = {"vits": "manifest-vits.json", "vitl": "manifest-vitl.json"}[meta["variant"]]
    model = load_entitysam(mw.make_state_dict(json.loads((REFERENCE / manifest).read_text()), meta["weight_seed"]))

    names = meta["frame_names"]
    n = len(names) if args.frames == "all" else min(int(args.frames), len(names))
    frames = ((i, preprocess_frame(Image.open(args.fixture / "frames" / name), model.cfg.image_size))
              for i, name in enumerate(names[:n]))
    rows = []
    everything = args.mode == "all"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=everything):
        steps = EntityTracker(model, attention_dtype=None if everything else torch.bfloat16).track(frames)
        while True:
            start = time.perf_counter()
            try:
                step = next(steps)
            except StopIteration:
                break
            seconds = time.perf_counter() - start
            p = step.step
            signs = np.packbits(step.mask_logits[:, 0].float().numpy() > 0, axis=-1)
            same = 1 - np.unpackbits(signs ^ golden["lowres_sign_bits"][p], axis=-1).mean()
            rows.append(dict(step=p, seconds=seconds, identical_mask_pixels=float(same),
                             eiou_max_diff=float(np.abs(step.scores.numpy() - golden["pred_eiou"][p]).max()),
                             points_max_diff=float(np.abs(step.points.numpy() - golden["sampled_point_coords"][p]).max())))
            print(f"step {p}: {seconds:6.1f} s, identical mask pixels {same:.4%}, "
                  f"eIoU max |diff| {rows[-1]['eiou_max_diff']:.4f}, points max |diff| "
                  f"{rows[-1]['points_max_diff']:.2f} px", flush=True)
    official = meta["step_times_s"][: len(rows)]
    ours = sum(r["seconds"] for r in rows)
    print(f"\n{meta['variant']} bfloat16 ({args.mode}) vs float32 golden over {len(rows)} steps: min identical mask "
          f"pixels {min(r['identical_mask_pixels'] for r in rows):.4%}, max eIoU diff "
          f"{max(r['eiou_max_diff'] for r in rows):.4f}; steps {ours:.1f} s vs official float32 "
          f"{sum(official):.1f} s = {sum(official) / ours:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
