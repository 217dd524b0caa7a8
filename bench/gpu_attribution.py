"""Show that the GPU watch attributes GPU memory to the process holding it (GPU host).

Run on a GPU host with torch (CUDA build) installed next to ollamad:

    python bench/gpu_attribution.py [--mib 1024] [--timeout 60]

It starts a child Python process that allocates ``--mib`` MiB on the first
CUDA device with torch and holds it, runs a :class:`~ollamad.gpu.GpuMonitor`
whose "Ollama tree" is just that child's pid, waits until NVML lists the
child on a GPU, prints that GPU's process table, and checks that the child
is marked as Ollama's and holds at least what it allocated (its CUDA
context comes on top).

NVML reports host pids: inside a container without the host pid namespace
(docker without ``--pid=host``) the child's pid never matches, and the
check fails with a message saying so.

Exit status: 0 when the memory is attributed to the child, 1 when not, 2
when this host has no GPU, no torch, or no CUDA device for torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import select
import subprocess
import sys
import time

from ollamad.gpu import GpuMonitor

MiB = 1024 ** 2

CHILD = """
import sys
import torch
if not torch.cuda.is_available():
    print("no-cuda", flush=True)
    sys.exit(3)
block = torch.ones(int(sys.argv[1]) * 1024 * 1024, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.read()  # hold the memory until the parent closes stdin
"""


def cannot_run(message: str) -> int:
    print(f"gpu_attribution: cannot run here: {message}", file=sys.stderr)
    return 2


def failed(message: str) -> int:
    print(f"gpu_attribution: FAILED: {message}", file=sys.stderr)
    return 1


def read_line(stream, timeout: float) -> str:
    """One line from a child's pipe, or "" after ``timeout`` s."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else ""


def find_process(snapshot: dict, pid: int) -> tuple[dict, dict] | None:
    """(gpu, process) for ``pid`` once NVML knows how much it holds."""
    for gpu in snapshot["gpus"]:
        for proc in gpu["processes"]:
            if proc["pid"] == pid and proc["used_memory"] is not None:
                return gpu, proc
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="memory the child allocates")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step")
    args = parser.parse_args(argv)

    if importlib.util.find_spec("torch") is None:
        return cannot_run("torch is not installed (pip install torch, a CUDA build)")
    tree: set[int] = set()
    monitor = GpuMonitor(interval=0.5, ollama_pids=lambda: tree)
    monitor.start()
    child = None
    try:
        if not monitor.wait_for_poll(1, timeout=30):
            return cannot_run("the GPU monitor did not complete a poll within 30 s")
        if not monitor.snapshot()["available"]:
            return cannot_run(f"no GPU: {monitor.snapshot()['reason']}")

        child = subprocess.Popen([sys.executable, "-c", CHILD, str(args.mib)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        tree.add(child.pid)
        said = read_line(child.stdout, args.timeout)
        if said == "no-cuda":
            return cannot_run("torch sees no CUDA device (CPU-only build, or CUDA_VISIBLE_DEVICES)")
        if said != "ready":
            return failed(f"the child did not allocate {args.mib} MiB within {args.timeout:g} s"
                          f" (exit status {child.poll()})")

        found = None
        deadline = time.monotonic() + args.timeout
        while found is None and time.monotonic() < deadline:
            snap = monitor.snapshot()
            found = find_process(snap, child.pid)
            if found is None:
                monitor.wait_for_poll(snap["poll_count"] + 1, timeout=5)
        if found is None:
            return failed(f"NVML never listed the child (pid {child.pid}) with its memory; in a"
                          " container, NVML shows host pids: run with the host pid namespace")

        gpu, proc = found
        print(f"GPU {gpu['index']} ({gpu['name']}): {gpu['memory_used'] / MiB:.0f} of"
              f" {gpu['memory_total'] / MiB:.0f} MiB used")
        print(f"{'pid':>8} {'MiB':>9} {'ollama':>7}")
        for row in gpu["processes"]:
            used = "n/a" if row["used_memory"] is None else f"{row['used_memory'] / MiB:.0f}"
            mark = "  <- the child" if row["pid"] == child.pid else ""
            print(f"{row['pid']:>8} {used:>9} {str(row['ollama']):>7}{mark}")
        print(f"ollama_memory on GPU {gpu['index']}: {gpu['ollama_memory'] / MiB:.0f} MiB;"
              f" other_memory: {gpu['other_memory'] / MiB:.0f} MiB")
        if proc["ollama"] is not True:
            return failed("the child's memory was not attributed to the Ollama tree")
        if proc["used_memory"] < args.mib * MiB:
            return failed(f"the child holds {proc['used_memory'] / MiB:.0f} MiB,"
                          f" less than the {args.mib} MiB it allocated")
        print(f"OK: {proc['used_memory'] / MiB:.0f} MiB attributed to pid {child.pid}"
              f" (allocated {args.mib} MiB plus its CUDA context)")
        return 0
    finally:
        if child is not None:
            child.stdin.close()  # lets the child exit and free the memory
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        monitor.stop(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
