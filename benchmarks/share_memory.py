"""``veil share`` of a checkpoint larger than the owner's memory: peak RSS, wall, bytes.

    python -m benchmarks.share_memory [--layers 4] [--memory-limit-gb 3] [--dir DIR]

Writes a checkpoint of LLaMA-7B's exact layer shapes (hidden 4096, 32 heads, SwiGLU 11008,
vocab 32000) with ``--layers`` decoder layers and seeded random weights as float32
safetensors (one shard per layer, as large checkpoints ship), starts three serving parties
with mutual TLS on loopback (``veil launch --serve``, each with its share store), and runs
the model owner's command exactly as a user would::

    veil share --config C --model llama --hf DIR

in its own process, optionally inside a memory cgroup of ``--memory-limit-gb`` (cgroup v1
or v2; the script says so when it cannot make one, and then runs unlimited).  The owner
reads the checkpoint one layer at a time (:mod:`veil.nn.lazy_import`), so its peak RSS is
about the largest group of tensors (the embedding and LM head: 2 x 131 M parameters) and
the weights imported from it, not the model: at 4 layers the float32 checkpoint is 3.99 GiB.
All sizes are printed in GiB (2^30 bytes), like ``--memory-limit-gb``.
Then one private ``logits`` request (4 tokens) is served from the stores and compared with
the float32 plaintext model (loaded here, after the share), to show the shared weights work.

Prints: checkpoint size, owner peak RSS (VmHWM of its process, sampled), wall time of the
share, bytes per party (the share's own cost line), store size per party, and the private
request's wall and logit error.  Disk: 4 bytes per parameter for the checkpoint and 8 at
each of parties 1 and 2 (party 0 keeps seeds): 20 GiB at 4 layers (1.07 G parameters).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from benchmarks.grpc_e2e import REPO, Cluster

SEED = 2307_12533
SAMPLE_SECONDS = 0.05


def llama7b_config(layers: int, tiny: bool = False):
    """LLaMA-7B's configuration (Touvron et al. 2023) with ``layers`` decoder layers
    (``tiny``: the same with hidden 64, for a quick check of the script)."""
    import transformers

    return transformers.LlamaConfig(
        vocab_size=64 if tiny else 32000,
        hidden_size=64 if tiny else 4096,
        num_hidden_layers=layers,
        num_attention_heads=4 if tiny else 32,
        num_key_value_heads=4 if tiny else 32,
        intermediate_size=96 if tiny else 11008,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )


def write_checkpoint(directory: Path, config) -> int:
    """Seeded random float32 weights in one safetensors shard per layer; returns bytes written.

    Matrices ~ N(0, 0.02^2) as in LLaMA's initialisation, norm gains ~ 1 + U(-0.1, 0.1).
    """
    from safetensors.torch import save_file

    from veil.nn.lazy_import import hf_skeleton

    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    skeleton = hf_skeleton(directory)
    shards: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, param in skeleton.named_parameters():
        layer = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards.setdefault(layer, {})[name] = tuple(param.shape)
    generator = torch.Generator().manual_seed(SEED)
    weight_map, written = {}, 0
    for index, (layer, shapes) in enumerate(shards.items()):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shapes.items():
            if len(shape) == 1:
                tensors[name] = 1 + 0.1 * (2 * torch.rand(shape, generator=generator) - 1)
            else:
                tensors[name] = 0.02 * torch.randn(shape, generator=generator)
            weight_map[name] = file
        save_file(tensors, directory / file, metadata={"format": "pt"})
        written += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": written}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return written


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int | None) -> Iterator[Path | None]:
    """A fresh memory cgroup limited to ``limit_bytes``, removed afterwards (None: no limit)."""
    group = _make_cgroup(limit_bytes) if limit_bytes is not None else None
    try:
        yield group
    finally:
        if group is not None:
            with contextlib.suppress(OSError):
                group.rmdir()


def _make_cgroup(limit_bytes: int) -> Path | None:
    for root, limit_file in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),  # cgroup v1
        (Path("/sys/fs/cgroup"), "memory.max"),  # cgroup v2
    ):
        if not (root / "cgroup.procs").exists() or (
            limit_file == "memory.max" and not (root / "cgroup.controllers").exists()
        ):
            continue
        group = root / f"veil-share-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_bytes))
            return group
        except OSError as exc:
            print(f"cannot make a memory cgroup under {root} ({exc}); running unlimited")
            with contextlib.suppress(OSError):
                group.rmdir()
            return None
    print("no cgroup memory controller on this machine; running unlimited")
    return None


def run_owner(argv: list[str], group: Path | None) -> tuple[int, float, float, str]:
    """(exit code, wall s, peak RSS GiB, stdout) of ``veil share`` in its own process."""

    command = [sys.executable, "-m", "veil.parties.cli", *argv]
    if group is not None:  # the shell joins the cgroup, then becomes the owner process
        command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs"), *command]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak_kib = [0]
    sampler = threading.Thread(target=_sample_peak, args=(proc, peak_kib), daemon=True)
    sampler.start()
    out = proc.stdout.read()
    proc.wait()
    sampler.join()
    return proc.returncode, time.perf_counter() - start, peak_kib[0] / 2**20, out


def _sample_peak(proc: subprocess.Popen, peak_kib: list[int]) -> None:
    """Keep ``proc``'s VmHWM (its own peak RSS) until it exits.

    Not ``ru_maxrss`` from ``wait4``: Linux carries that over fork and exec, so the owner
    would inherit this script's peak from writing the checkpoint.  VmHWM only grows, so
    the last sample, taken at most ``SAMPLE_SECONDS`` before the exit, is the peak unless
    the very end allocates more than everything before it.
    """
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        with contextlib.suppress(OSError, StopIteration):
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
            peak_kib[0] = max(peak_kib[0], int(line.split()[1]))
        time.sleep(SAMPLE_SECONDS)


def party_peaks_gb(launcher_pid: int) -> list[float]:
    """Peak RSS (VmHWM) of each process ``veil launch`` started, in start order."""
    peaks = []
    for status in sorted(Path("/proc").glob("[0-9]*/status"), key=lambda p: int(p.parent.name)):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            if int(fields["PPid"]) == launcher_pid and "VmHWM" in fields:
                peaks.append(int(fields["VmHWM"].split()[0]) / 2**20)
    return peaks


def _peaks_line(cluster: Cluster) -> str:
    return ", ".join(f"{gb:.2f}" for gb in party_peaks_gb(cluster.proc.pid)) + " GiB"


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="veil-share-"))
    checkpoint, cluster_dir = scratch / "checkpoint", scratch / "cluster"
    cluster_dir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        written = write_checkpoint(checkpoint, llama7b_config(args.layers, args.tiny))
        print(
            f"checkpoint: LLaMA-7B {'layout, tiny' if args.tiny else 'shapes'}, {args.layers} layers, {written / 2**30:.2f} GiB float32 "
            f"safetensors in {checkpoint} ({time.perf_counter() - start:.0f} s to write)"
        )
        limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 2**30)
        cluster = Cluster(cluster_dir)
        try:
            config = str(cluster.config_path)
            owner = [
                "--cert",
                str(cluster_dir / "owner.pem"),
                "--key",
                str(cluster_dir / "owner.key"),
            ]
            argv = [
                "share",
                "--config",
                config,
                *owner,
                "--model",
                "llama",
                "--hf",
                str(checkpoint),
            ]
            cluster.share("warm-up", _tiny_llama())  # returns once the parties serve
            with memory_cgroup(limit) as group:
                if group is not None:
                    print(f"owner runs in memory cgroup {group}: limit {args.memory_limit_gb} GiB")
                rc, wall, peak_gb, out = run_owner(argv, group)
            print(out.rstrip())
            if rc != 0:
                print(f"veil share failed (exit {rc})")
                return 1
            print(
                f"owner: veil share {wall:.1f} s, peak RSS {peak_gb:.2f} GiB "
                f"(checkpoint {written / 2**30:.2f} GiB float32)"
            )
            print(f"parties: peak RSS {_peaks_line(cluster)} (after the share)")
            stores = [_du(cluster_dir / f"store-party{rank}") for rank in range(3)]
            print(
                "stores: "
                + ", ".join(f"party {r} {b / 2**30:.2f} GiB" for r, b in enumerate(stores))
            )
            _check_served(cluster, checkpoint)
            print(f"parties: peak RSS {_peaks_line(cluster)} (after the request)")
        finally:
            cluster.close()
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _tiny_llama():
    return transformers_llama(llama7b_config(1, tiny=True))


def transformers_llama(config):
    import transformers

    return transformers.LlamaForCausalLM(config).eval()


def _check_served(cluster: Cluster, checkpoint: Path) -> None:
    """One private logits request served from the stores, against the float32 plaintext."""
    import transformers

    ids = torch.tensor([[1, 30, 46, 27]])
    start = time.perf_counter()
    served = cluster.client.logits("llama", ids)
    wall = time.perf_counter() - start
    model = transformers.LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(ids).logits.double()
    error = float((served[0, -1] - plain[0, -1]).abs().max())
    same = bool(served[0, -1].argmax() == plain[0, -1].argmax())
    print(
        f"served: logits of 4 tokens in {wall:.1f} s, max logit error {error:.2e} "
        f"(logits up to {float(plain.abs().max()):.2f}), next token identical: {same}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (LLaMA-7B: 32)")
    parser.add_argument(
        "--memory-limit-gb", type=float, help="run the owner in a memory cgroup of this many GiB"
    )
    parser.add_argument("--dir", help="scratch directory (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and stores")
    parser.add_argument("--tiny", action="store_true", help="hidden 64 instead of 4096 (a check)")
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
