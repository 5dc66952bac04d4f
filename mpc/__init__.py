"""Secret-shared tensors over Z_2^64 and the runtime that moves them between parties."""

from veil.mpc.arith import ArithShare, cat, stack
from veil.mpc.boolean import BoolShare
from veil.mpc.communicator import Communicator, PeerError, PeerTimeoutError
from veil.mpc.fixedpoint import FixedPoint, FixedPointRangeError
from veil.mpc.party import Party
from veil.mpc.sharing import deal, reconstruct, reveal, reveal_to, share
from veil.mpc.simulate import simulate


def where(condition: ArithShare, x: "ArithShare | float", y: "ArithShare | float") -> ArithShare:
    """condition ? x : y for an integer 0/1 share ``condition`` (one multiplication)."""
    from veil.protocols.select import mux

    return mux(condition, x, y)


__all__ = [
    "ArithShare",
    "BoolShare",
    "Communicator",
    "FixedPoint",
    "FixedPointRangeError",
    "Party",
    "PeerError",
    "PeerTimeoutError",
    "cat",
    "deal",
    "reconstruct",
    "reveal",
    "reveal_to",
    "share",
    "simulate",
    "stack",
    "where",
]
