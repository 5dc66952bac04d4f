"""How many uploaded bytes a party holds for clients, capped per client and in all.

A party keeps a request's input shares from their Upload until its Run consumes them
(or the request is dropped), so a client that uploads and never runs, or one that
streams without end, could fill the party's memory.  Bytes are charged as they
*arrive* -- never as a header claims them -- and released when the service lets go of
them; a charge past either limit is refused, and the service answers
RESOURCE_EXHAUSTED.  The limits come from the cluster config
(``upload_limit_per_client``, ``upload_limit_per_party``); their defaults leave room
for an owner to share the bundled models, whose weights are all in flight at once.
"""

from __future__ import annotations

import threading
from collections import Counter


class UploadRefused(Exception):
    """Accepting more bytes would pass a limit (the message names it and the client)."""


class UploadLimits:
    """Bytes in flight per client identity (None: the unauthenticated test mode) and in all."""

    def __init__(self, per_client: int, per_party: int):
        self.per_client = per_client
        self.per_party = per_party
        self._by_client: Counter[str | None] = Counter()
        self._total = 0
        self._lock = threading.Lock()

    def charge(self, client: str | None, nbytes: int) -> None:
        """Count ``nbytes`` more for ``client``, or raise :class:`UploadRefused`."""
        with self._lock:
            mine = self._by_client[client] + nbytes
            who = f"client {client!r}" if client is not None else "the client"
            if mine > self.per_client:
                raise UploadRefused(
                    f"{who} would have {mine} bytes of uploads in flight, over the limit of "
                    f"{self.per_client} bytes per client (upload_limit_per_client)"
                )
            if self._total + nbytes > self.per_party:
                raise UploadRefused(
                    f"uploads from all clients would reach {self._total + nbytes} bytes, over "
                    f"the limit of {self.per_party} bytes per party (upload_limit_per_party); "
                    "retry later"
                )
            self._by_client[client] = mine
            self._total += nbytes

    def release(self, client: str | None, nbytes: int) -> None:
        """Give back bytes charged to ``client`` (consumed by a Run, or dropped)."""
        if nbytes == 0:
            return
        with self._lock:
            self._by_client[client] -= nbytes
            if self._by_client[client] <= 0:
                del self._by_client[client]
            self._total -= nbytes

    def in_flight(self, client: str | None = None) -> int:
        """Bytes held for ``client``."""
        with self._lock:
            return self._by_client[client]
