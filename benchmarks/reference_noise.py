"""How far float rounding alone moves the outputs: our model with 1 vs 2 threads vs the golden run.

    python benchmarks/reference_noise.py [--fixture ../shared/reference/golden-vitl] [--steps 2]

Runs the first `--steps` steps on the fixture's frame 0 twice, in two processes with 1 and 2
torch threads, and prints per step the median |diff| and sign mismatch of the low-res logits for
(a) 1 thread vs 2 threads of our own implementation and (b) each run vs the golden outputs.
If (a) exceeds the reference tolerances, the fixture is below the noise floor of float32
arithmetic and a failure against it says nothing about correctness.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def run_steps(fixture: Path, steps: int, threads: int, out: Path) -> None:
    """Child process: run `steps` steps on frame 0 and save the low-res logits."""
    import torch
    from PIL import Image

    from entitysam.checkpoints import load_entitysam
    from entitysam.inference.preprocess import preprocess_frame
    from entitysam.inference.tracker import EntityTracker

    torch.set_num_threads(threads)
    meta = json.loads((fixture / "meta.json").read_text())
    spec = importlib.util.spec_from_file_location("make_weights", REFERENCE / "make_weights.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    manifest = {"vits": "manifest-vits.json", "vitl": "manifest-vitl.json"}[meta["variant"]]
    model = load_entitysam(mw.make_state_dict(json.loads((REFERENCE / manifest).read_text()), meta["weight_seed"]))
    image = preprocess_frame(Image.open(fixture / "frames" / meta["frame_names"][0]), model.cfg.image_size)
    tracker = EntityTracker(model)
    logits = [tracker.step(0, image, is_warmup=True).mask_logits[:, 0].numpy() for _ in range(steps)]
    np.save(out, np.stack(logits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", type=Path, default=REFERENCE / "golden-vitl")
    parser.add_argument("--steps", type=int, default=2, help="steps on frame 0 (at most 4: the warm-up + frame 0)")
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_steps(args.fixture, args.steps, int(args.child[0]), Path(args.child[1]))
        return

    golden = np.load(args.fixture / "golden.npz")
    with tempfile.TemporaryDirectory() as tmp:
        outs = {t: Path(tmp) / f"t{t}.npy" for t in (1, 2)}
        procs = [subprocess.Popen([sys.executable, __file__, "--fixture", str(args.fixture), "--steps",
                                   str(args.steps), "--child", str(t), str(out)]) for t, out in outs.items()]
        if any(p.wait() != 0 for p in procs):
            sys.exit("a child run failed")
        runs = {t: np.load(out) for t, out in outs.items()}

    def compare(a: np.ndarray, b_sub4: np.ndarray, b_bits: np.ndarray) -> str:
        median = np.median(np.abs(a[:, ::4, ::4] - b_sub4))
        signs = np.unpackbits(np.packbits(a > 0, axis=-1) ^ b_bits, axis=-1).mean()
        return f"median |diff| {median:.1e}, sign mismatch {signs:.1e}"

    print(f"{args.fixture.name}: low-res logits, frame 0")
    for p in range(args.steps):
        t1, t2 = runs[1][p], runs[2][p]
        print(f"step {p}: 1 vs 2 threads (ours): "
              f"{compare(t1, t2[:, ::4, ::4], np.packbits(t2 > 0, axis=-1))}")
        for t in (1, 2):
            print(f"        {t} thread(s) vs golden:    "
                  f"{compare(runs[t][p], golden['lowres_logits_sub4'][p], golden['lowres_sign_bits'][p])}")


if __name__ == "__main__":
    main()
