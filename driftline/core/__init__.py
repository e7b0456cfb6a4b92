"""The foundation every layer stands on: it imports nothing from the rest of driftline.

:mod:`~driftline.core.errors` (the exception tree), :mod:`~driftline.core.records` (what travels
on the features hop), :mod:`~driftline.core.keys` (where everything lives in Redis) and
:mod:`~driftline.core.meta` (the typed metadata of a snapshot). See docs/design.md.
"""
