"""Export a training checkpoint of the demo model to the bundled safetensors file.

    python scripts/export_demo.py output/demo-stage2/model_final.pth
    python scripts/export_demo.py CKPT --out src/entitysam/weights/demo.safetensors --dtype float16

The checkpoint is loaded strictly as the `demo` configuration (`load_entitysam`), so the file
has exactly the state-dict keys the model expects; tensors are stored in float16 (half the size;
`load_entitysam` computes in float32) unless `--dtype float32`. The metadata records the source
checkpoint, its iteration and training config name, and the tensors' SHA-256 so that a rebuilt
file can be compared with the shipped one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "entitysam" / "weights" / "demo.safetensors"


def export(checkpoint: Path, out: Path, dtype: torch.dtype = torch.float16) -> dict:
    from safetensors.torch import save_file

    from entitysam.checkpoints import load_entitysam

    model = load_entitysam(checkpoint, config="demo")  # strict: raises on any key/shape difference
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.suffix == ".pth" else {}
    trainer = raw.get("trainer", {}) if isinstance(raw, dict) else {}
    train_cfg = json.loads(trainer["config"]) if "config" in trainer else {}
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(state[k].numpy().tobytes())
    meta = {
        "format": "entitysam-demo",
        "config": "demo",
        "source": checkpoint.name,
        "iteration": str(raw.get("iteration", "")) if isinstance(raw, dict) else "",
        "train_config": train_cfg.get("name", ""),
        "dtype": str(dtype).replace("torch.", ""),
        "sha256": digest.hexdigest(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    return {**meta, "bytes": out.stat().st_size, "tensors": len(state),
            "parameters": sum(v.numel() for v in state.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a training checkpoint (model_*.pth) of the demo configuration")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT.relative_to(REPO)}")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    a = p.parse_args(argv)
    info = export(a.checkpoint, a.out, getattr(torch, a.dtype))
    print(json.dumps({**info, "out": str(a.out)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
