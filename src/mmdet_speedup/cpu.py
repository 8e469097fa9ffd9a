"""Which CPU a run ran on, beyond its model name. Imports nothing heavy: the results page reads it without torch."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

#: Microarchitectures by (vendor, family[, model]) from /proc/cpuinfo. A VM's model name ("AMD EPYC") hides the
#: generation, and the same two cores of a Zen 4 and a Zen 5 differ 2x in bf16 matmul peak (this study's
#: environment records, 2026-11-24). AMD's family 25 is Zen 3 without AVX-512 and Zen 4 with it.
UARCHS = {("AuthenticAMD", 23): "Zen/Zen 2", ("AuthenticAMD", 26): "Zen 5",
          ("GenuineIntel", 6, 143): "Sapphire Rapids", ("GenuineIntel", 6, 207): "Emerald Rapids",
          ("GenuineIntel", 6, 173): "Granite Rapids", ("GenuineIntel", 6, 106): "Ice Lake",
          ("GenuineIntel", 6, 85): "Skylake/Cascade Lake"}


@lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpuinfo_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first CPU's fields in ``/proc/cpuinfo`` (or ``cpuinfo``), each name's first value; empty when unreadable."""
    fields: dict[str, str] = {}
    for line in (_proc_cpuinfo() if cpuinfo is None else cpuinfo).split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_identity(cpuinfo: str | None = None) -> dict[str, Any]:
    """Vendor, family, model and stepping of the first CPU in ``/proc/cpuinfo`` (or ``cpuinfo``), with its
    microarchitecture where the table above knows it (``uarch`` None otherwise); empty when unreadable."""
    fields = cpuinfo_fields(cpuinfo)
    if "cpu family" not in fields:
        return {}
    ident = {"vendor": fields.get("vendor_id", ""),
             **{k: int(fields[f]) for k, f in (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
                if fields.get(f, "").isdigit()}}
    vendor, family, model = ident["vendor"], ident.get("family"), ident.get("model")
    uarch = UARCHS.get((vendor, family, model)) or UARCHS.get((vendor, family))
    if (vendor, family) == ("AuthenticAMD", 25):
        uarch = "Zen 4" if "avx512f" in fields.get("flags", "").split() else "Zen 3"
    return {**ident, "uarch": uarch}


def cpu_label(env: Mapping[str, Any]) -> str:
    """The CPU of an environment record in words: model name, and the microarchitecture or family/model when
    recorded (records before benchmark version 2.1's last runs have neither)."""
    ident = env.get("cpu_id") or {}
    extra = ident.get("uarch") or (f"family {ident['family']} model {ident.get('model', '?')}" if "family" in ident else "")
    return f"{env.get('cpu_model', '?')} ({extra})" if extra else str(env.get("cpu_model", "?"))
