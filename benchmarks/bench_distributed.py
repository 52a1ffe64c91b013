"""Global pruning of a model sharded with FSDP2 across gloo ranks on this machine: lqkernels'
distributed step against (a) all-gathering the weights, then the single-process lqkernels step,
and (b) all-gathering, then torch.nn.utils.prune.global_unstructured. Reports time per step (the
slowest rank, median over repeats) and the bytes each rank sends.

    python benchmarks/bench_distributed.py                # 4 ranks, 16 x 2048x2048 float32 (67.1M)
    python benchmarks/bench_distributed.py --ranks 2 --layers 4 --width 512 --repeats 1   # a smoke run

Bytes sent per rank are counted at the collectives as ring algorithms send them (gloo and NCCL
use rings for large messages): all-reduce of B bytes 2(w-1)/w·B, all-gather of a B-byte result
(w-1)/w·B, all_gather_object of a p-byte pickle (w-1)·p plus its size exchange. The masks of
lqkernels sharded and (a) are checked to be identical before anything is reported; (b) breaks
ties its own way and counts weights that are exactly 0 as candidates (lqkernels counts them as
pruned), so its mask may differ by a few entries.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from distributed_world import free_port  # noqa: E402

SENT = {"bytes": 0}


def _count(name: str, original):
    """A collective that adds what this rank sends (ring model) to SENT before running."""
    def counted(*args, **kwargs):
        w = dist.get_world_size(kwargs.get("group"))
        if name == "all_reduce":
            t = args[0]
            SENT["bytes"] += 2 * (w - 1) * t.numel() * t.element_size() // w
        elif name == "all_gather":
            t = args[1]
            SENT["bytes"] += (w - 1) * t.numel() * t.element_size()
        elif name == "all_gather_object":
            SENT["bytes"] += (w - 1) * (len(pickle.dumps(args[1])) + 8)
        return original(*args, **kwargs)
    return counted


for _name in ("all_reduce", "all_gather", "all_gather_object"):
    setattr(dist, _name, _count(_name, getattr(dist, _name)))


class Stack(nn.Module):
    def __init__(self, layers: int, width: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(layers))


def _timed(step) -> tuple[float, int, object]:
    """(seconds of the slowest rank, bytes this rank sent, step's result)."""
    dist.barrier()
    SENT["bytes"] = 0
    start = time.perf_counter()
    result = step()
    elapsed = time.perf_counter() - start
    sent = SENT["bytes"]
    slowest = torch.tensor([elapsed])
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest), sent, result


def _gathered_stack(sharded: Stack) -> Stack:
    """Every weight all-gathered whole onto this rank, as a plain model."""
    plain = Stack(0, 0)
    for layer in sharded.layers:
        local = layer.weight.to_local().detach()
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        linear = nn.Linear(1, 1, bias=False)
        linear.weight = nn.Parameter(torch.cat(parts))
        plain.layers.append(linear)
    return plain


def _rank(rank: int, world: int, port: int, args, out) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lqkernels import prune

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = Stack(args.layers, args.width)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    initial = [layer.weight.to_local().detach().clone() for layer in model.layers]

    def reset():
        with torch.no_grad():
            for layer, w in zip(model.layers, initial):
                layer.weight.to_local().copy_(w)
                layer._buffers.pop("weight_mask", None)

    def local_rows(full: torch.Tensor) -> torch.Tensor:
        rows = -(-full.shape[0] // world)
        return full[rank * rows:(rank + 1) * rows]

    steps = {
        "magnitude": lambda m: prune.magnitude(m, args.amount, scope="global"),
        "sap": lambda m: prune.sap(m, scope="global"),
    }
    rows = []
    for name, step in steps.items():
        timings = {"lqkernels (sharded)": [], "(a) all-gather + lqkernels": []}
        if name == "magnitude":
            timings["(b) all-gather + torch global_unstructured"] = []
        sent = {}
        for _ in range(args.repeats):
            reset()
            seconds, sent["lqkernels (sharded)"], _ = _timed(lambda: step(model))
            timings["lqkernels (sharded)"].append(seconds)
            ours = [layer.weight_mask.to_local() for layer in model.layers]

            def gathered_lqkernels():
                plain = _gathered_stack(model)
                step(plain)
                return [local_rows(layer.weight_mask.bool()) for layer in plain.layers]

            reset()
            seconds, sent["(a) all-gather + lqkernels"], theirs = _timed(gathered_lqkernels)
            timings["(a) all-gather + lqkernels"].append(seconds)
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), f"{name}: masks differ from (a)"
            if name == "magnitude":
                def gathered_torch():
                    plain = _gathered_stack(model)
                    torch.nn.utils.prune.global_unstructured(
                        [(layer, "weight") for layer in plain.layers],
                        pruning_method=torch.nn.utils.prune.L1Unstructured, amount=args.amount)
                    return plain

                key = "(b) all-gather + torch global_unstructured"
                seconds, sent[key], _ = _timed(gathered_torch)
                timings[key].append(seconds)
        for variant, values in timings.items():
            rows.append({"step": f"global {name}", "variant": variant, "seconds": statistics.median(values),
                         "bytes_sent_per_rank": sent[variant]})
    if rank == 0:
        out.write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "rows.json"
        mp.spawn(_rank, args=(args.ranks, free_port(), args, out), nprocs=args.ranks)  # raises what a rank raised
        rows = json.loads(out.read_text())
    params = args.layers * args.width * args.width
    print(f"{args.ranks} gloo ranks on {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}; {args.layers} x {args.width}x{args.width} float32 = {params / 1e6:.1f}M "
          f"parameters, FSDP2-sharded; median of {args.repeats}")
    ours = {r["step"]: r for r in rows if r["variant"] == "lqkernels (sharded)"}
    print(f"{'step':18} {'variant':45} {'seconds':>9} {'MB sent/rank':>13} {'time / ours':>11} {'bytes / ours':>12}")
    for r in rows:
        mine = ours[r["step"]]
        print(f"{r['step']:18} {r['variant']:45} {r['seconds']:9.3f} {r['bytes_sent_per_rank'] / 1e6:13.3f} "
              f"{r['seconds'] / mine['seconds']:11.2f} {r['bytes_sent_per_rank'] / mine['bytes_sent_per_rank']:12.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ranks": args.ranks, "params": params, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
