"""What several tests share: loading a script of ``scripts/`` as a module, and small PNGs (blank or not)."""
from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (registered in ``sys.modules``: its dataclasses need it)."""
    sys.path.insert(0, str(ROOT / "scripts"))  # a script may import its neighbours
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def png_bytes(blank: bool = False, size: tuple[int, int] = (8, 8)) -> bytes:
    """A white PNG of ``size`` (height, width), with a red square unless ``blank``."""
    import numpy as np
    from PIL import Image

    h, w = size
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    if not blank:
        arr[h // 4:3 * h // 4, w // 4:3 * w // 4] = (200, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
