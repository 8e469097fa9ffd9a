"""The study layer: what each chapter computes from its rows and says, the words, the cases, and the run ledger.

One module per chapter (``preprocess``, ``precision``, ``masks``, ``nms``, ``loading``, ``ladder``,
``runtimes``, ``model``), ``words`` for verdicts as sentences and glue, ``cases`` for the case labels, and a
torch-free ``ledger`` of runs that scripts import like any module. Submodules load on first use.
"""
from __future__ import annotations

from typing import Any

from .. import submodule


def __getattr__(name: str) -> Any:
    value = submodule(__name__, name)
    globals()[name] = value
    return value
