"""Who may do what on the client API: the one place a serving party decides it.

An identity is the common name of the caller's verified mTLS certificate
(:func:`veil.parties.tls.caller_name`); with ``insecure = true`` (local tests) there
is none and nothing below is enforced.  Every RPC of :mod:`veil.parties.service`
passes through here, at every party, so a request is refused by all three parties
alike and one corrupted party cannot grant what the others refuse.

- **Using the API** takes an identity named in the config's ``clients`` or ``owners``
  (or a ``[models.NAME] owners`` list).
- **Sharing a model** (:data:`~veil.parties.models.SHARE_PROGRAM`) takes an owner of that
  model: the owners its ``[models.NAME]`` table names, else the global ``owners``.
  Replacing a model that exists takes the identity that shared it, which every party
  records with the model; the caller's identity travels to the program in the options
  (:func:`Authz.stamp`), so it is also part of what the three parties check they agree on.
  There is no delete program yet; a delete would be one more model-writing program here.
  A model shared in parts (:mod:`veil.parties.share_sessions`) takes, for every part and
  the commit, the identity that opened its share session.
- **A request belongs to its creator**: the identity of its first Upload or Run, at
  every party.  Upload, Run and Fetch of that request id by anyone else are refused,
  so knowing an id (every party sees every id) grants nothing.  The refusal reveals
  that the id is in use, not whose it is; ids are random, and the shares are the secret.

Refusals are PERMISSION_DENIED and name the caller's identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from veil.parties import tls
from veil.parties.config import ClusterConfig
from veil.parties.models import CALLER_OPTION, SHARE_PROGRAM
from veil.parties.share_sessions import SESSION_OPTION

ModelOwner = Callable[[str], "str | None"]
"""``model_owner(name)``: the identity that shared model ``name`` here, or None."""
SessionOwner = Callable[[str], "str | None"]
"""``session_owner(id)``: the identity that opened share session ``id`` here, or None."""


class Authz:
    """The access rules of one party's client API (see the module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        model_owner: ModelOwner | None = None,
        session_owner: SessionOwner | None = None,
    ):
        self.config = config
        self.model_owner = model_owner
        self.session_owner = session_owner
        self._users = {
            *config.clients,
            *config.owners,
            *(name for owners in config.model_owners.values() for name in owners),
        }

    def caller(self, context: grpc.ServicerContext) -> str | None:
        """The caller's identity; aborts unless it may use the API (None when insecure)."""
        if self.config.insecure:
            return None
        name = tls.caller_name(context)
        if name not in self._users:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{name!r} is not a client of this cluster"
            )
        return name

    def stamp(
        self, context: grpc.ServicerContext, caller: str | None, options: dict[str, str]
    ) -> dict[str, str]:
        """``options`` with the caller's identity added for the program; a client's own
        value for that key would be a forged identity, so it is refused."""
        if CALLER_OPTION in options:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"option {CALLER_OPTION!r} is set by the parties, not by clients",
            )
        return options if caller is None else {**options, CALLER_OPTION: caller}

    def admit_program(
        self,
        context: grpc.ServicerContext,
        caller: str | None,
        program: str,
        options: dict[str, str],
    ) -> None:
        """Abort unless ``caller`` may run ``program`` with ``options``."""
        if self.config.insecure or program != SHARE_PROGRAM:
            return
        model = options.get("model", "")
        owners = self.config.model_owners.get(model, self.config.owners)
        if caller not in owners:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller!r} may not share or replace model {model!r}: "
                f"its owners are {list(owners)}",
            )
        current = self.model_owner(model) if self.model_owner is not None else None
        if current is not None and current != caller:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller!r} may not replace model {model!r}: it belongs to {current!r}",
            )
        session = options.get(SESSION_OPTION)
        opener = self.session_owner(session) if session and self.session_owner else None
        if opener is not None and opener != caller:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller!r} may not add to or commit share session {session!r} of model "
                f"{model!r}: it belongs to {opener!r}",
            )

    def claim(
        self,
        context: grpc.ServicerContext,
        caller: str | None,
        request_id: str,
        holders: Iterable[str | None],
    ) -> None:
        """Abort unless every holder of ``request_id`` (its creator) is ``caller``."""
        if any(holder != caller for holder in holders):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller!r} may not use request {request_id!r}: it belongs to another client",
            )
