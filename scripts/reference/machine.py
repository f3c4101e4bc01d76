"""What a floating-point result depends on besides the code: the CPU and the torch build.

Used by the reference harness (recorded in the fixtures it writes) and by
tests/test_reference.py (to tell whether it runs on a fixture's own CPU family). Standard
library + torch only; never imported by the package.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

# ISA features that change which float kernels run (and so how results round): FMA contracts
# a*b+c into one rounding; the vector width changes the blocking of GEMM/conv reductions;
# bf16/AMX change oneDNN's choices for reduced-precision paths.
ROUNDING_FLAGS = ("fma", "avx", "avx2", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                  "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_record(cpuinfo: str | None = None) -> dict:
    """The first CPU of /proc/cpuinfo: {"vendor", "model_name", "family", "model", "flags"}.

    family/model are the integers `lscpu` shows ("CPU family", "Model"); flags are those of
    ROUNDING_FLAGS the CPU has. On a machine without /proc/cpuinfo, family and model are None.
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # first processor only
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    family = fields.get("cpu family")
    model = fields.get("model")
    return {
        "vendor": fields.get("vendor_id", platform.processor() or "unknown"),
        "model_name": fields.get("model name", "unknown"),
        "family": int(family) if family and family.isdigit() else None,
        "model": int(model) if model and model.isdigit() else None,
        "flags": [f for f in ROUNDING_FLAGS if f in flags],
    }


def torch_record() -> dict:
    """torch version, the CPU capability its kernels dispatch to, BLAS/oneDNN versions."""
    import torch

    config = torch.__config__.show()

    def line(pattern: str) -> str | None:
        found = re.search(pattern, config)
        return found.group(0).strip() if found else None

    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": line(r"Intel\(R\) oneAPI Math Kernel Library Version [^\n]*") or line(r"BLAS_INFO=\w+"),
        "onednn": line(r"MKL-DNN v[0-9.]+") or line(r"oneDNN v[0-9.]+"),
        "parallel": line(r"OpenMP [0-9]+"),
    }


def machine_record(threads: int) -> dict:
    """Everything a fixture records about the machine that made it."""
    return {"cpu": cpu_record(), "torch": torch_record(), "threads": int(threads)}


def cpu_family_name(cpu: dict) -> str:
    """A short human name for a `cpu_record` ("AMD family 23 model 1"; its model name where the family
    is unknown)."""
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(cpu.get("vendor"), cpu.get("vendor"))
    if cpu.get("family") is None:
        return f"{vendor} CPU {cpu.get('model_name')!r}"
    model = f" model {cpu['model']}" if cpu.get("model") is not None else ""
    return f"{vendor} family {cpu.get('family')}{model}"


if __name__ == "__main__":
    import json

    import torch

    print(json.dumps(machine_record(torch.get_num_threads()), indent=1))
