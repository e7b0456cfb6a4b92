"""driftline: live sensor readings in, self-correcting online predictions out.

Start reading at :mod:`driftline.cli` (the ``driftline`` command) and :mod:`driftline.settings`.
The stream stages live in :mod:`streams`, the learning in :mod:`models`, the HTTP service in :mod:`api`.
"""

from driftline.errors import DriftlineError
from driftline.settings import Settings, get_settings

__all__ = ["DriftlineError", "Settings", "get_settings"]
__version__ = "0.1.0"
