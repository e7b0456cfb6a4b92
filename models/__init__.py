"""Online models: specs, prequential evaluation, the learner, signed snapshots, the Redis registry.

Names are imported when first asked for: importing one module (the HMAC sealing of
:mod:`driftline.models.snapshot`, say) never loads River or the rest of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_SPEC": "specs",
    "ESTIMATORS": "specs",
    "ModelSpec": "specs",
    "Evaluation": "evaluation",
    "Prediction": "evaluation",
    "OnlineLearner": "learner",
    "ModelRegistry": "registry",
    "open_snapshot": "snapshot",
    "seal_snapshot": "snapshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
