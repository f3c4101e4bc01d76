"""Which reference check applies on this machine: the fixture's CPU against this one.

Floating-point kernels round differently on different CPU families (vector width, FMA, oneDNN's
choices), and the official code itself does not reproduce a fixture made on another family.
So a fixture is held to the README tolerances (and exact mode to bit-identity) only on the CPU
family that made it; elsewhere to what the official code's own cross-CPU difference was measured
to be (scripts/reference/harness.py against-fixture), with a margin.

The default mode reorders arithmetic for speed, as another thread count does for the official code
(a different split of its reductions). Where the official code's own difference from a fixture at
another thread count on the fixture's CPU family was measured, that noise bounds the default mode's
tolerance on that family where it exceeds the README's: a chaotic fixture (ViT-L with random weights)
moves further than the README tolerances under any reordering, the official code's own included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from entitysam.config import EntitySAMConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "scripts" / "reference"))
from _golden import CROSS_CPU_MARGIN, THREAD_NOISE_MARGIN, Tolerance, measured_tolerance, widest  # noqa: E402
from machine import cpu_family_name, cpu_record  # noqa: E402

CROSS_CPU_FILE = Path(__file__).with_name("reference_cross_cpu.json")
THREAD_NOISE_FILE = Path(__file__).with_name("reference_thread_noise.json")

# The public fixtures' meta.json says only "cpu": "AMD EPYC"; they were made on a Zen 5 (AMD
# family 26). This is the one place that knowledge lives: fixtures written by
# scripts/reference/harness.py carry their full machine record ("machine" in meta.json).
PUBLIC_FIXTURE_CPU = {"vendor": "AuthenticAMD", "model_name": "AMD EPYC (Zen 5)", "family": 26, "model": None,
                      "flags": None}


def fixture_cpu(meta: dict) -> dict:
    """The CPU record of the machine that made a fixture: its machine record; else, for a meta.json
    that names only the CPU, an Intel CPU by that name, or the public fixtures' Zen 5 ("AMD EPYC")."""
    if "machine" in meta:
        return meta["machine"]["cpu"]
    named = str(meta.get("cpu", ""))
    if "intel" in named.lower():
        return {"vendor": "GenuineIntel", "model_name": named, "family": None, "model": None, "flags": None}
    return PUBLIC_FIXTURE_CPU


def same_cpu_family(a: dict, b: dict) -> bool:
    """Same vendor and family, and the same rounding-relevant ISA flags where both record them
    (AMD family 25 is both Zen 3 and Zen 4, which differ in AVX-512). Where a family is unknown (a
    fixture that names only its CPU), the same vendor and model name."""
    if a.get("family") is None or b.get("family") is None:
        return a.get("vendor") == b.get("vendor") and a.get("model_name") == b.get("model_name") not in (None, "unknown")
    same = a.get("vendor") == b.get("vendor") and a.get("family") == b.get("family")
    if a.get("flags") is not None and b.get("flags") is not None:
        same = same and sorted(a["flags"]) == sorted(b["flags"])
    return same


def recorded_measurements() -> dict[str, list[dict]]:
    """reference_cross_cpu.json: fixture name -> the official code's measurements on other CPUs."""
    recorded = json.loads(CROSS_CPU_FILE.read_text()) if CROSS_CPU_FILE.exists() else {}
    return {key: ms for key, ms in recorded.items() if not key.startswith("_")}


def own_measurements(name: str, meta: dict, recorded: dict[str, list[dict]]) -> list[dict]:
    """This fixture's measurements: in its meta.json ("cross_cpu"), or recorded for it."""
    return list(meta.get("cross_cpu") or recorded.get(name, []))


def thread_noise(name: str) -> list[dict]:
    """reference_thread_noise.json: the official code's own difference from fixture `name` at another
    thread count, wherever it was measured."""
    recorded = json.loads(THREAD_NOISE_FILE.read_text()) if THREAD_NOISE_FILE.exists() else {}
    return list(recorded.get(name, []))


def cross_cpu_measurements(name: str, meta: dict) -> list[dict]:
    """The official code's own per-step difference from a fixture on other CPUs: this fixture's
    (in its meta.json, or recorded in reference_cross_cpu.json), then every other fixture's. The
    difference comes from the pair of CPUs (their kernels' rounding), not from the frames, so a
    fixture nobody measured is held to what was measured on the others."""
    recorded = recorded_measurements()
    others = [m for key, ms in recorded.items() if key != name for m in ms]
    return own_measurements(name, meta, recorded) + others


def reproduced_on(name: str, meta: dict, here: dict) -> dict | None:
    """This fixture's own measurement, if any, of the official code on `here`'s CPU family that
    reproduced every step of the fixture bit for bit: that family then rounds as the fixture's own."""
    steps = int(meta.get("num_frames", 0)) + EntitySAMConfig().num_warmup_copies
    for m in own_measurements(name, meta, recorded_measurements()):
        measured = {r["step"] for r in m.get("steps", []) if r.get("bit_identical")}
        if m.get("cpu") and same_cpu_family(m["cpu"], here) and steps and measured >= set(range(steps)):
            return m
    return None


def rounds_as_fixture(name: str, meta: dict, cpu: dict) -> bool:
    """Whether `cpu` rounds as the machine that made fixture `name`: its CPU family, or one on which the
    official code was measured to reproduce every step of the fixture bit for bit. The official code's
    noise measured on such a CPU is the noise on the fixture's own family."""
    return same_cpu_family(fixture_cpu(meta), cpu) or reproduced_on(name, meta, cpu) is not None


def reference_check(name: str, meta: dict, exact: bool = False, here: dict | None = None
                    ) -> tuple[str, Callable[[int], Tolerance], bool, str]:
    """(kind, step -> tolerance, exact mode must be bit-identical, why) for fixture `name` here.

    kind: "same-cpu" (README tolerances, bit-identity in exact mode), "cross-cpu" (tolerances
    from the measured cross-CPU difference), "cross-cpu-unmeasured" (README tolerances, but a
    failure may be the CPU).
    """
    here = cpu_record() if here is None else here
    made_on = fixture_cpu(meta)
    where = f"fixture {name} made on {cpu_family_name(made_on)}, this machine {cpu_family_name(here)}"
    tight = " -> README tolerances" + (" and bit-identity (exact mode)" if exact else "")
    same_family = same_cpu_family(made_on, here)
    if same_family or reproduced_on(name, meta, here) is not None:
        why = (f"{where}: same CPU family" if same_family else
               f"{where}: the official code on this CPU family reproduces every step of this fixture bit for bit "
               f"(measured: {CROSS_CPU_FILE.name})")
        noise = [] if exact else [m for m in thread_noise(name) if m.get("cpu") and rounds_as_fixture(name, meta, m["cpu"])]
        if noise:
            threads = ", ".join(sorted({str(m.get("threads")) for m in noise}))
            return ("same-cpu", lambda step: measured_tolerance(step, noise, THREAD_NOISE_MARGIN), True,
                    f"{why} -> tolerances = max(README, the official code's own difference from this fixture "
                    f"with {threads} thread(s) on this CPU family: {THREAD_NOISE_FILE.name})")
        return ("same-cpu", lambda step: Tolerance(), True, why + tight)
    measured, noise = cross_cpu_measurements(name, meta), thread_noise(name)
    if not measured and not noise:
        return ("cross-cpu-unmeasured", lambda step: Tolerance(), False,
                f"{where}: other CPU family, no cross-CPU measurement for this fixture -> README tolerances; a "
                "failure may be the CPU, not the code (run scripts/reference/harness.py check here)")
    # This fixture's own measurements by name; the others (every fixture's) only counted: listing them
    # all would bury the rule that applies under a page of notes.
    own = own_measurements(name, meta, recorded_measurements()) + noise
    others = len(measured) + len(noise) - len(own)
    notes = "; ".join([m.get("note", "measured") for m in own]
                      + ([f"{others} measurement(s) of other fixtures in {CROSS_CPU_FILE.name}"] if others else []))

    def tolerance(step: int) -> Tolerance:  # the official code's own thread noise bounds another CPU's too
        return widest(step, measured_tolerance(step, measured), measured_tolerance(step, noise, THREAD_NOISE_MARGIN))

    return ("cross-cpu", tolerance, False,
            f"{where}: other CPU family -> tolerances = max(README, {CROSS_CPU_MARGIN:g} x the official code's own "
            f"cross-CPU difference, its thread-count noise) [{notes}]; bit-identity holds only against the official "
            "code run on this machine (scripts/reference/harness.py check)")
