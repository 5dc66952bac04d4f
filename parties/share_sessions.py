"""A model shared in several requests: parts appended to one uncommitted model, then committed.

A model larger than memory cannot travel in one request: every party would hold all of its
weights at once (a request's inputs stay in memory until it runs).  The owner therefore
sends the weights in *parts*, each an ordinary :data:`~veil.parties.models.SHARE_PROGRAM`
request of bounded size (:func:`stream_parts`), naming a *share session* in its options:

- ``session``: a random id the owner draws for this share;
- ``part``: 0, 1, 2, ... in order;
- ``last``: ``"true"`` on the final part, which commits the model.

Part 0 opens the session for the calling identity: the party rebuilds the structure from
the public config, checks each weight's name and shape against it, and appends the weights
to an uncommitted model (:meth:`~veil.parties.models.ModelStore.begin_share`: in memory, or
a hidden directory of the party's share store).  The last part commits once every weight
of the config arrived; nothing is served before, and a share cut short is abandoned (after
:data:`SESSION_IDLE_SECONDS` without a part; a restarted party drops the hidden directory).
A request without ``session`` is a share in one part.

A session belongs to the identity that opened it: a part or a commit from any other
identity is refused (:meth:`ShareSessions.owner` feeds :class:`veil.parties.authz.Authz`
when the Run call arrives, and :meth:`ShareSessions.check` refuses again, at all three
parties alike, when the request is about to run), so no one can add weights to, or
commit, someone else's model.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from veil.mpc.seeded import Payload, expand
from veil.parties.models import (
    CALLER_OPTION,
    HeldShare,
    ModelError,
    ModelStore,
    ServedModel,
    attach_shares,
    unique_params,
)
from veil.parties.stored_models import weightless_structure

SESSION_OPTION = "session"
PART_OPTION = "part"
LAST_OPTION = "last"
SESSION_IDLE_SECONDS = 1800.0
"""A session without a new part for this long is abandoned when another one opens."""
SHARE_PART_BYTES = 256 << 20
"""Default size of one part: bytes of weight data that party 1 or 2 receives (8 per element)."""
_SESSION_ID = re.compile(r"[0-9a-f]{8,64}")
_PUBLIC = ("model", "family", "config", "norm_headroom_bits")


class ShareError(ModelError):
    """A part that does not fit its session (order, owner, names, shapes)."""


class ShareTarget(Protocol):
    """Where a session writes its weights until it commits (see ``ModelStore.begin_share``)."""

    def put(self, param: str, payload: Payload, shape: tuple[int, ...]) -> None: ...

    def commit(self) -> None: ...

    def abandon(self) -> None: ...


class MemoryShare:
    """An uncommitted model kept in memory: each weight expanded into this party's pair."""

    def __init__(self, store: ModelStore, name: str, model: ServedModel):
        self._store, self._name, self._model = store, name, model
        self._shares: dict[str, HeldShare] = {}

    def put(self, param: str, payload: Payload, shape: tuple[int, ...]) -> None:
        self._shares[param] = HeldShare(expand(payload, shape), payload.frac_bits)

    def commit(self) -> None:
        module = attach_shares(self._model.module, self._shares)
        self._store.put(self._name, replace(self._model, module=module))

    def abandon(self) -> None:
        self._shares.clear()


@dataclass
class _Session:
    owner: str | None
    public: dict[str, str]
    expected: dict[str, tuple[int, ...]]
    target: ShareTarget
    received: set[str] = field(default_factory=set)
    next_part: int = 0
    touched: float = field(default_factory=time.monotonic)

    def put(self, name: str, payload: Payload) -> None:
        shape = self.expected.get(name)
        if shape is None:
            raise ShareError(
                f"weight {name!r} is not a parameter of the {self.public['family']} config"
            )
        if name in self.received:
            raise ShareError(f"weight {name!r} arrived twice in this share")
        for k, part in zip(payload.components, payload.parts, strict=True):
            if isinstance(part, torch.Tensor) and tuple(part.shape) != shape:
                raise ShareError(
                    f"weight {name!r}: component {k} has shape {tuple(part.shape)}, "
                    f"the config says {shape}"
                )
        self.target.put(name, payload, shape)
        self.received.add(name)

    def commit(self) -> None:
        missing = sorted(set(self.expected) - self.received)
        if missing:
            raise ShareError(
                f"the share ended without weights {missing[:5]} ({len(missing)} missing)"
            )
        self.target.commit()


class ShareSessions:
    """The open share sessions of one party, by id (thread-safe)."""

    def __init__(self) -> None:
        self._open: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def owner(self, session_id: str) -> str | None:
        """The identity that opened session ``session_id``, or None if it is not open."""
        with self._lock:
            session = self._open.get(session_id)
        return session.owner if session is not None else None

    def check(self, options: Mapping[str, str]) -> str | None:
        """Why this party cannot take this part now (None if it can)."""
        session_id, part, _ = _position(options)
        if session_id is None:
            return None
        with self._lock:
            session = self._open.get(session_id)
        caller = options.get(CALLER_OPTION)
        if part == 0:
            return None if session is None else f"share session {session_id!r} is already open"
        if session is None:
            return (
                f"no open share session {session_id!r} (its part 0 never arrived, "
                "failed, or it was abandoned)"
            )
        if session.owner != caller:
            return (
                f"{caller!r} may not add to share session {session_id!r}: "
                f"it belongs to {session.owner!r}"
            )
        if part != session.next_part:
            return f"share session {session_id!r} expects part {session.next_part}, got part {part}"
        changed = [key for key in _PUBLIC if options.get(key, "") != session.public[key]]
        if changed:
            return f"part {part} of share session {session_id!r} changes {changed}"
        return None

    def receive(
        self, store: ModelStore, options: Mapping[str, str], payloads: dict[str, Payload]
    ) -> None:
        """Append one part's weights (by parameter name) and commit after the last part."""
        why = self.check(options)
        if why is not None:
            raise ShareError(why)
        session_id, part, last = _position(options)
        session_id = session_id or uuid.uuid4().hex
        with self._lock:
            session = self._open.get(session_id) if part else None
        if session is None:
            session = self._begin(store, session_id, options)
        try:
            for name, payload in payloads.items():
                session.put(name, payload)
            if last:
                session.commit()
        except BaseException:
            self._close(session_id)
            session.target.abandon()
            raise
        if last:
            self._close(session_id)
        else:
            session.next_part = part + 1
            session.touched = time.monotonic()

    def _begin(self, store: ModelStore, session_id: str, options: Mapping[str, str]) -> _Session:
        self._abandon_idle()
        missing = [key for key in ("model", "family", "config") if not options.get(key)]
        if missing:
            raise ShareError(f"options {missing} are required to share a model")
        public = {key: options.get(key, "") for key in _PUBLIC}
        structure = weightless_structure(public["family"], public["config"])
        expected = {name: tuple(value.shape) for name, value in unique_params(structure).items()}
        headroom = int(public["norm_headroom_bits"] or "0")
        model = ServedModel(
            public["family"], public["config"], headroom, structure, options.get(CALLER_OPTION)
        )
        target = store.begin_share(public["model"], model)
        session = _Session(model.owner, public, expected, target)
        with self._lock:
            self._open[session_id] = session
        return session

    def _close(self, session_id: str) -> None:
        with self._lock:
            self._open.pop(session_id, None)

    def _abandon_idle(self) -> None:
        horizon = time.monotonic() - SESSION_IDLE_SECONDS
        with self._lock:
            idle = [key for key, session in self._open.items() if session.touched < horizon]
            dropped = [self._open.pop(key) for key in idle]
        for session in dropped:
            session.target.abandon()


def _position(options: Mapping[str, str]) -> tuple[str | None, int, bool]:
    """(session id or None, part index, whether it is the last part) of a share request."""
    session_id = options.get(SESSION_OPTION)
    part = int(options.get(PART_OPTION, "0"))
    last = options.get(LAST_OPTION, "true") == "true"
    return session_id, part, last


def check_part_options(options: Mapping[str, str]) -> str | None:
    """Why the session options of a share request are malformed (None if they are fine)."""
    session_id = options.get(SESSION_OPTION)
    if session_id is not None and not _SESSION_ID.fullmatch(session_id):
        return f"option {SESSION_OPTION!r} must be 8 to 64 lowercase hex digits, got {session_id!r}"
    part = options.get(PART_OPTION, "0")
    if not part.isdigit():
        return f"option {PART_OPTION!r} must be a part number 0, 1, 2, ..., got {part!r}"
    if options.get(LAST_OPTION, "true") not in ("true", "false"):
        return f"option {LAST_OPTION!r} must be 'true' or 'false', got {options[LAST_OPTION]!r}"
    if session_id is None and (part != "0" or options.get(LAST_OPTION, "true") != "true"):
        return f"a share in several parts needs option {SESSION_OPTION!r}"
    return None


def stream_parts(
    weights: Iterable[tuple[str, torch.Tensor]], part_bytes: int
) -> Iterator[tuple[list[tuple[str, torch.Tensor]], bool]]:
    """``(part, is_last)``: weights grouped, in order, into parts of at most ``part_bytes`` of
    component data (8 bytes per element); a larger weight travels alone.

    Reads ``weights`` lazily, one part ahead (to know which part is the last), so a source
    that reads its weights layer by layer is never held whole: at most two parts at a time.
    """
    ahead: list[tuple[str, torch.Tensor]] | None = None
    current: list[tuple[str, torch.Tensor]] = []
    used = 0
    for name, value in weights:
        nbytes = 8 * value.numel()
        if current and used + nbytes > part_bytes:
            if ahead is not None:
                yield ahead, False
            ahead, current, used = current, [], 0
        current.append((name, value))
        used += nbytes
    if ahead is not None:
        yield ahead, False
    yield current, True


def part_options(session_id: str, part: int, last: bool) -> dict[str, str]:
    """The options that place one request in a share session."""
    return {SESSION_OPTION: session_id, PART_OPTION: str(part), LAST_OPTION: str(last).lower()}
