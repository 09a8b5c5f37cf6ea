"""The garbage collector and a long-running server."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Leave everything built so far (modules, schemas, the application) out of every later
    garbage collection.

    A full collection walks every tracked object and pauses every request in flight meanwhile:
    in a gateway that had just started, about 60 ms for 120,000 objects, most of them imports.
    Frozen objects are still freed when nothing refers to them; only cycles among them would be
    kept, and startup's garbage is collected first.
    """
    gc.collect()
    gc.freeze()
