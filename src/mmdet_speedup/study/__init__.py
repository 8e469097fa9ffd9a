"""The study layer: what each chapter computes from its rows and says, the words, the cases, and the run ledger.

One module per chapter (``preprocess``, ``precision``, ``masks``, ``nms``, ``loading``, ``ladder``,
``runtimes``, ``model``), ``words`` for verdicts as sentences and glue, ``cases`` for the case labels, and a
torch-free ``ledger`` of runs that scripts import like any module. Submodules load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    try:
        value = importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value
