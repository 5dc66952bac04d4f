"""Secret-shared tensors over Z_2^64 and the runtime that moves them between parties."""

from mpc.arith import ArithShare, cat, stack
from mpc.boolean import BoolShare
from mpc.communicator import Communicator, PeerError, PeerTimeoutError
from mpc.fixedpoint import FixedPoint, FixedPointRangeError
from mpc.party import Party
from mpc.sharing import deal, reconstruct, reveal, reveal_to, share
from mpc.simulate import simulate


def where(condition: ArithShare, x: "ArithShare | float", y: "ArithShare | float") -> ArithShare:
    """condition ? x : y for an integer 0/1 share ``condition`` (one multiplication)."""
    from protocols.select import mux

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
