"""What the CLI tells a user whose request failed: which party, and what to do about it."""

from __future__ import annotations

from veil.parties.config import ClusterConfig

UNREACHABLE = ("failed to connect", "Connection refused", "DNS resolution failed")
"""gRPC's words for a party that no server answers at its address."""


def explain(exc: Exception, config: ClusterConfig, config_path: str) -> str:
    """``exc`` in one line; parties that cannot be reached are named with their address and
    the command that starts them."""
    answers: dict[int, str] = getattr(exc, "parties", {})
    unreachable = [
        rank
        for rank, text in sorted(answers.items())
        if text.startswith("UNAVAILABLE") and any(words in text for words in UNREACHABLE)
    ]
    if not unreachable:
        return str(exc)
    where = ", ".join(f"party {rank} at {config.parties[rank].address}" for rank in unreachable)
    return (
        f"{where} {'is' if len(unreachable) == 1 else 'are'} unreachable; start the parties "
        f"with `veil launch --config {config_path} --serve` (one machine) or "
        f"`veil serve --config {config_path} --rank N` on each party's host"
    )
