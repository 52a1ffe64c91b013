"""A torch.distributed world of local processes for the tests (gloo, CPU): started once per size
and reused by every test, each of which runs one function on every rank under a deadline.

A test's function is looked up by module and name in each worker (tests/distributed_cases.py);
its ranks' results (or exceptions, as (type name, message)) come back in rank order. A function
that overruns its deadline fails the test and the world is torn down (the next test starts a
fresh one), so a hang costs one test, never the run. Ports are taken free from the OS; each
collective also times out on its own (PROCESS_GROUP_TIMEOUT) rather than waiting forever.
"""
from __future__ import annotations

import datetime
import importlib
import multiprocessing
import os
import queue
import socket
import traceback

PROCESS_GROUP_TIMEOUT = datetime.timedelta(seconds=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, size: int, port: int, inbox, outbox) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # ranks share the machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=PROCESS_GROUP_TIMEOUT)
    outbox.put((rank, "ready", None))
    while (job := inbox.get()) is not None:
        module, name, args = job
        try:
            result = ("ok", getattr(importlib.import_module(module), name)(*args))
        except BaseException as e:  # noqa: BLE001 - reported to the test, which decides
            result = ("raised", (type(e).__name__, str(e), traceback.format_exc()))
        outbox.put((rank, *result))
    dist.destroy_process_group()


class World:
    """`size` processes in one gloo process group; run(name, *args) calls
    distributed_cases.<name>(*args) on every rank and returns [(status, value)] in rank order."""

    def __init__(self, size: int, start_timeout: float = 120):
        context = multiprocessing.get_context("spawn")
        port = free_port()
        self.size = size
        self.inboxes = [context.Queue() for _ in range(size)]
        self.outbox = context.Queue()
        self.processes = [context.Process(target=_serve, args=(rank, size, port, self.inboxes[rank], self.outbox),
                                          daemon=True) for rank in range(size)]
        for p in self.processes:
            p.start()
        self._collect("ready", start_timeout)

    def _collect(self, what: str, timeout: float) -> list:
        results = [None] * self.size
        try:
            for _ in range(self.size):
                rank, status, value = self.outbox.get(timeout=timeout)
                results[rank] = (status, value)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"{what}: not every rank answered within {timeout:g} s (a hang); world torn down")
        return results

    def run(self, name: str, *args, timeout: float = 120, module: str = "distributed_cases") -> list:
        for inbox in self.inboxes:
            inbox.put((module, name, args))
        return self._collect(name, timeout)

    def close(self) -> None:
        for p in self.processes:
            if p.is_alive():
                p.kill()
            p.join(5)
        self.processes = []

    def shutdown(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for p in self.processes:
            p.join(10)
        self.close()
