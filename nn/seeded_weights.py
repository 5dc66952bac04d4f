"""Seeded random LLaMA weights of any size, and their shares regenerated instead of stored.

No LLaMA-7B checkpoint exists offline, and its weights (6.7 G parameters) fit neither in
this machine's memory nor, as three parties' shares, on its disk.  What the benchmark needs
is a model of the exact shapes whose every weight can be produced again at will:

- :func:`llama_skeleton`: a :class:`~veil.nn.llama.LlamaForCausalLM` of a config with
  :class:`~veil.nn.streamed.WeightSpec` parameters (no data; norms without gains, i.e.
  gain 1 as at initialisation, the attention scale folded into the query columns).
- :class:`SeededLlamaWeights`: weight ``name`` is AES-CTR keyed by SHA-256(seed, name),
  arithmetically shifted to ``AMPLITUDE_BITS`` bits: uniform on [-2^-5, 2^-5) (standard
  deviation 0.018, LLaMA's initialisation scale is 0.02), exact in fixed point with 18
  fractional bits, so the float reference and the shares hold the same numbers.  The query
  columns are then scaled by 181/2048 ~ 1/sqrt(128) in integer arithmetic (exact too).
- :class:`RegeneratedShares`: the three parties' stores when the disk lacks room.  The
  owner's component seeds are fresh (``new_key``) and handed to the parties as in
  :func:`veil.mpc.seeded.deal_seeded`; the data component x_2 = W - x_0 - x_1, which
  parties 1 and 2 would read from disk, is recomputed instead, from W and the x_0, x_1
  that party 0 has just expanded for itself (the stand-in for a disk read; party 0's own
  work is unchanged and timed apart).

Cost per weight element per forward pass: party 0 expands two seeded components, parties
1 and 2 one each, and x_2's regeneration takes W's keystream and two subtractions: 5 x 8
bytes of AES-CTR, 1.5-3.6 GB/s per core on this machine.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence

import torch

from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.prg import AesPrg, new_key
from veil.nn.llama import Block, LlamaConfig, LlamaForCausalLM
from veil.nn.modules import Attention, AttentionShape, Embedding, Linear, RMSNorm, SwiGLU
from veil.nn.streamed import WeightSpec, specs_in_order, weight_specs

LLAMA_7B = LlamaConfig(
    vocab_size=32000,
    hidden_size=4096,
    n_layer=32,
    n_head=32,
    n_kv_head=32,
    head_dim=128,
    intermediate_size=11008,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
"""LLaMA-7B (Touvron et al. 2023, Table 2): 32 layers, hidden 4096, 32 heads, SwiGLU 11008."""

AMPLITUDE_BITS = 14
"""Weights are signed 14-bit integers at 18 fractional bits: |w| < 2^-5."""
QUERY_SCALE = (181, 11)
"""1/sqrt(head_dim) for head_dim 128 as 181 / 2^11 (0.08838 against 0.08839)."""
_CHUNK = 1 << 22


def llama_skeleton(config: LlamaConfig, fxp: FixedPoint) -> LlamaForCausalLM:
    """The model of ``config`` with :class:`WeightSpec` parameters, in the order they are read."""
    hidden, inner = config.hidden_size, config.intermediate_size
    q_width = config.n_head * config.head_dim
    kv_width = config.n_kv_head * config.head_dim
    shape = AttentionShape(config.n_head, config.n_kv_head, config.head_dim)

    def meta(*dims: int) -> torch.Tensor:
        return torch.empty(*dims, device="meta")

    def block() -> Block:
        return Block(
            RMSNorm(None, config.rms_norm_eps),
            Attention(Linear(meta(hidden, q_width + 2 * kv_width)), Linear(meta(q_width, hidden)), shape),
            RMSNorm(None, config.rms_norm_eps),
            SwiGLU(Linear(meta(hidden, 2 * inner)), Linear(meta(inner, hidden))),
        )

    model = LlamaForCausalLM(
        config,
        embed=Embedding(meta(config.vocab_size, hidden)),
        blocks=[block() for _ in range(config.n_layer)],
        norm=RMSNorm(None, config.rms_norm_eps),
        lm_head=Linear(meta(hidden, config.vocab_size)),
    )
    return weight_specs(model, fxp)


def parameter_count(skeleton) -> int:
    return sum(torch.Size(spec.shape).numel() for spec in specs_in_order(skeleton))


class SeededLlamaWeights:
    """Weight ``spec.name`` of a model, reproducible from ``seed`` (public: test weights)."""

    def __init__(self, seed: int, config: LlamaConfig, fxp: FixedPoint):
        if fxp.frac_bits < AMPLITUDE_BITS:
            raise ValueError(f"seeded weights need >= {AMPLITUDE_BITS} fractional bits, got {fxp.frac_bits}")
        self.seed = seed
        self.fxp = fxp
        self._q_width = config.n_head * config.head_dim

    def ring(self, spec: WeightSpec) -> torch.Tensor:
        """The weight in fixed point (int64 at ``fxp.frac_bits``)."""
        key = hashlib.sha256(f"veil-seeded-weights:{self.seed}:{spec.name}".encode()).digest()[:16]
        ring = AesPrg(key).fill_int64(torch.empty(spec.shape, dtype=torch.int64))
        ring >>= 64 - AMPLITUDE_BITS  # arithmetic: uniform signed 14-bit integers
        if spec.name.endswith("attn.qkv.weight"):
            factor, shift = QUERY_SCALE
            query = ring[:, : self._q_width]
            query.mul_(factor).bitwise_right_shift_(shift)
        return ring

    def float(self, spec: WeightSpec) -> torch.Tensor:
        """The same weight as float64 (exact: 14-bit integers over 2^18)."""
        return self.ring(spec).to(torch.float64) / 2.0**self.fxp.frac_bits

    def __call__(self, spec: WeightSpec) -> torch.Tensor:
        return self.float(spec)


class RegeneratedShares:
    """The three parties' seed-compressed stores of ``weights``, with x_2 recomputed on read."""

    def __init__(self, weights: SeededLlamaWeights, specs: Sequence[WeightSpec]):
        self._weights = weights
        self._specs = {spec.name: spec for spec in specs}
        # The owner's fresh component seeds (x_0, x_1) of every weight: what it would send.
        self._seeds = {name: (new_key(), new_key()) for name in self._specs}
        self._cond = threading.Condition()
        self._data: dict[str, tuple[torch.Tensor, int]] = {}  # x_2, parties yet to take it
        self.expand_s = [0.0, 0.0, 0.0]
        """Per party: seconds spent expanding its seeded components."""
        self.regenerate_s = [0.0, 0.0, 0.0]
        """Seconds spent recomputing x_2 (at party 0's loader, for parties 1 and 2)."""
        self._ended = [0, 0, 0]  # requests each party has ended
        self.read_s = [0.0, 0.0, 0.0]
        """Per party: seconds spent waiting for and copying x_2 (its "store read")."""

    def clear(self) -> None:
        """Drop any x_2 computed ahead for a party that did not come to take it."""
        with self._cond:
            self._data.clear()

    def source(self, rank: int) -> _PartyShares:
        return _PartyShares(self, rank)

    def _expand(self, rank: int, name: str, component: int, out: torch.Tensor) -> None:
        start = time.perf_counter()
        AesPrg(self._seeds[name][component]).fill_int64(out)
        self.expand_s[rank] += time.perf_counter() - start

    def _offer(self, rank: int, name: str, pair: torch.Tensor) -> None:
        """Party 0 has just expanded x_0 and x_1 of weight ``name`` into ``pair``: x_2 =
        W - x_0 - x_1 from them costs one keystream (W's) instead of three.  Stands in for
        parties 1 and 2 reading x_2 from their disks; timed apart from party 0's own work."""
        start = time.perf_counter()
        data = self._weights.ring(self._specs[name])
        data -= pair[0]
        data -= pair[1]
        with self._cond:
            self._data[name] = (data, 2)
            self._cond.notify_all()
        self.regenerate_s[rank] += time.perf_counter() - start

    def _last_component(self, rank: int, name: str) -> torch.Tensor:
        """x_2 of weight ``name`` once party 0 has offered it, kept until both parties 1
        and 2 have taken it.  A loader of party 1 or 2 that ran ahead of party 0 at the end
        of a request gives up when party 0 ends that request."""
        with self._cond:
            request = self._ended[rank]
            while name not in self._data:
                if self._ended[0] > request:
                    raise RuntimeError(f"party 0 ended the request before weight {name!r} was read")
                self._cond.wait()
            data, takers = self._data[name]
            if takers == 1:
                del self._data[name]
            else:
                self._data[name] = (data, takers - 1)
            return data


class _PartyShares:
    """Party ``rank``'s view: ``load_pair`` like :meth:`veil.parties.store.StoredModel.load_pair`."""

    def __init__(self, shares: RegeneratedShares, rank: int):
        self._shares = shares
        self.rank = rank

    def load_pair(self, param: str, out: torch.Tensor | None = None) -> torch.Tensor:
        spec = self._shares._specs[param]
        if out is not None and tuple(out.shape) == (2, *spec.shape):
            pair = out
        else:
            pair = torch.empty((2, *spec.shape), dtype=torch.int64)
        for slot, component in enumerate((self.rank, (self.rank + 1) % 3)):
            if component == 2:
                start = time.perf_counter()
                pair[slot].copy_(self._shares._last_component(self.rank, param))
                self._shares.read_s[self.rank] += time.perf_counter() - start
            else:
                self._shares._expand(self.rank, param, component, pair[slot])
        if self.rank == 0:
            self._shares._offer(self.rank, param, pair)
        return pair

    def end_request(self) -> None:
        """Called by the streamed model when this party's request ends."""
        with self._shares._cond:
            self._shares._ended[self.rank] += 1
            self._shares._cond.notify_all()
