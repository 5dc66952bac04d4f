"""PNG plots of the benchmark figures (matplotlib, from the optional ``bench`` extra).

    pip install -e ".[bench]"
    python -m benchmarks.models bert --plot          # writes plots/bert_protocols.png, bert.json
    python -m benchmarks.models decode --plot        # per-token time against prompt length
    python -m benchmarks.plots                       # Veil beside SPU from the saved runs

Every plot is drawn from figures a benchmark run measured and saved (``<model>.json`` in
:data:`PLOT_DIR`); the only figures written here are SecretFlow-SPU's reference numbers,
quoted with their source in :data:`SPU_REFERENCE`.  Without matplotlib the scripts print
one line saying how to install it and carry on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

PLOT_DIR = Path(__file__).resolve().parent / "plots"

# SecretFlow-SPU's PUMA on the same shapes and machine kind (2 cores, three parties in one
# process, seeded weights): the references of the benchmark issue, quoted in RESULTS.md.
# Wall seconds (the middle of a quoted range), bytes sent by party 0, peak RSS in GB.
SPU_REFERENCE = {
    "bert": {"wall_s": 158.0, "bytes_sent": 2.45e9, "peak_rss_gb": 12.4},
    "gpt2": {"wall_s": 108.0, "bytes_sent": 0.53e9, "peak_rss_gb": 14.8},
}


@dataclass
class Headline:
    """One end-to-end run's figures, as saved by ``benchmarks.models --plot``."""

    model: str
    wall_s: float
    bytes_sent: int
    rounds: int  # critical-path rounds
    peak_rss_gb: float

    def save(self, directory: Path = PLOT_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.model}.json"
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, model: str, directory: Path = PLOT_DIR) -> Headline | None:
        path = directory / f"{model}.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None (with a hint) if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('plots skipped: matplotlib is not installed (pip install -e ".[bench]")',
              file=sys.stderr)
        return None
    return plt


def protocol_breakdown(
    by_protocol: Mapping[str, object], title: str, path: Path, top: int = 10
) -> Path | None:
    """Bar charts (seconds, MB sent, critical-path rounds) of party 0's counters by protocol.

    ``by_protocol`` maps a protocol name to its :class:`veil.mpc.communicator.Traffic`;
    the ``top`` most expensive by time are drawn, the rest summed as "other".
    """
    plt = _pyplot()
    if plt is None:
        return None
    rows = sorted(by_protocol.items(), key=lambda kv: -kv[1].seconds)
    shown, rest = rows[:top], rows[top:]
    names = [name for name, _ in shown] + (["other"] if rest else [])

    def column(attr: str, scale: float = 1.0) -> list[float]:
        values = [getattr(t, attr) / scale for _, t in shown]
        return values + ([sum(getattr(t, attr) for _, t in rest) / scale] if rest else [])

    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(names) + 1.6), sharey=True)
    for ax, (label, values) in zip(
        axes,
        [("seconds", column("seconds")), ("MB sent", column("bytes_sent", 1e6)),
         ("critical-path rounds", column("depth"))],
    ):
        ax.barh(names, values, color="#4c72b0")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def decode_time_vs_prompt(
    prompt_lengths: list[int], per_token_s: list[float], prompt_s: list[float], title: str,
    path: Path,
) -> Path | None:
    """Seconds per generated token (KV cache) and for the prompt pass, against prompt length."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(prompt_lengths, per_token_s, "o-", label="per generated token (KV cache)")
    ax.plot(prompt_lengths, prompt_s, "s--", label="prompt pass")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("seconds")
    ax.set_xscale("log", base=2)
    ax.set_xticks(prompt_lengths, [str(n) for n in prompt_lengths])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def veil_vs_spu(directory: Path = PLOT_DIR) -> Path | None:
    """Wall time, bytes per party and peak memory of the saved Veil runs beside SPU's."""
    runs = [(m, Headline.load(m, directory)) for m in SPU_REFERENCE]
    runs = [(m, h) for m, h in runs if h is not None]
    if not runs:
        print("no saved runs: run `python -m benchmarks.models bert --plot` first", file=sys.stderr)
        return None
    plt = _pyplot()
    if plt is None:
        return None
    metrics = [("wall seconds", "wall_s", 1.0), ("GB sent per party", "bytes_sent", 1e9),
               ("peak RSS (GB)", "peak_rss_gb", 1.0)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    width = 0.38
    for ax, (label, key, scale) in zip(axes, metrics):
        xs = range(len(runs))
        ax.bar([x - width / 2 for x in xs], [getattr(h, key) / scale for _, h in runs], width,
               label="Veil", color="#4c72b0")
        ax.bar([x + width / 2 for x in xs], [SPU_REFERENCE[m][key] / scale for m, _ in runs],
               width, label="SecretFlow-SPU (PUMA)", color="#dd8452")
        ax.set_xticks(list(xs), [m for m, _ in runs])
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle("Veil beside SecretFlow-SPU (three parties in one process, 2 cores)")
    fig.tight_layout()
    return _save(fig, plt, directory / "veil_vs_spu.png")


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written: {path}", file=sys.stderr)
    return path


def main() -> int:
    veil_vs_spu()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
