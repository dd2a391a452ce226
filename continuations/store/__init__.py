"""The shared attribute store: sessions, their attributes and saved state, in SQLite.

::

    from continuations.store import Store

    with Store() as store:                      # $CONTINUATIONS_STORE or state_dir()/store.db
        attrs = store.attributes(session_id, namespace="app")
        version = attrs.set("greeting", {"text": "hi"})
        attrs.update("counter", lambda n: n + 1, default=0)
        with store.transaction():               # several operations, one atomic write
            attrs.set_secret("token", b"...")
            store.save_continuation(session_id, blob, tree={"frames": 3})

The file layout, the encoding and the guarantees are in docs/store.md.
"""

from __future__ import annotations

from continuations.store.attributes import Attributes
from continuations.store.codec import ValueKind
from continuations.store.migrations import Migration, Registry
from continuations.store.records import ContinuationInfo, SessionRecord
from continuations.store.store import Store, default_path

__all__ = [
    "Attributes",
    "ContinuationInfo",
    "Migration",
    "Registry",
    "SessionRecord",
    "Store",
    "ValueKind",
    "default_path",
]
