"""Compare the GPU watch's memory figures with nvidia-smi's, on a GPU host.

Run on the GPU host, from the repository with ollamad installed (no daemon
needed):

    python bench/gpu_compare.py [--rounds 5] [--interval 1.0] [--tolerance-mib 64]

Each round waits for a fresh poll of a :class:`~ollamad.gpu.GpuMonitor`, then
runs ``nvidia-smi --query-gpu=index,memory.used,memory.total
--format=csv,noheader,nounits`` at once and prints, per GPU, used and total
memory from both (MiB) and the differences. Memory that changes between the
two reads shows up as a difference, so run it on a quiet GPU or raise the
tolerance. A used-memory difference close to the "reserved" column means
the monitor fell back to NVML's v1 memory figures, which count
driver-reserved memory as used.

Exit status: 0 when every difference is within the tolerance, 1 when one is
not (or a GPU is missing from one side), 2 when this host has no GPU or no
nvidia-smi.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from ollamad.gpu import GpuMonitor

MiB = 1024 ** 2
SMI_ARGS = ["--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"]
ROW = "{:>5} {:>3} {:>12} {:>12} {:>9} {:>12} {:>12} {:>9} {:>9}"


def cannot_run(message: str) -> int:
    print(f"gpu_compare: cannot run here: {message}", file=sys.stderr)
    return 2


def _mib(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]" (MIG, some vGPUs)
        return None


def read_nvidia_smi(smi: str) -> dict[int, tuple[float | None, float | None]]:
    """{index: (used MiB, total MiB)} as nvidia-smi reports them."""
    out = subprocess.run([smi, *SMI_ARGS], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    rows = {}
    for line in out.splitlines():
        if line.strip():
            index, used, total = (field.strip() for field in line.split(","))
            rows[int(index)] = (_mib(used), _mib(total))
    return rows


def _difference(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else ours - theirs


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="monitor poll interval, s")
    parser.add_argument("--tolerance-mib", type=float, default=64.0)
    args = parser.parse_args(argv)

    monitor = GpuMonitor(interval=args.interval, ollama_pids=set)
    monitor.start()
    try:
        if not monitor.wait_for_poll(1, timeout=30):
            return cannot_run("the GPU monitor did not complete a poll within 30 s")
        snap = monitor.snapshot()
        if not snap["available"]:
            return cannot_run(f"no GPU: {snap['reason']}")
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return cannot_run("nvidia-smi is not on PATH")

        print(f"driver {snap['driver_version']}; figures in MiB; diff = monitor - nvidia-smi")
        print(ROW.format("round", "gpu", "used(mon)", "used(smi)", "diff",
                         "total(mon)", "total(smi)", "diff", "reserved"))
        worst, mismatched = 0.0, False
        for round_no in range(1, args.rounds + 1):
            if not monitor.wait_for_poll(snap["poll_count"] + 1, timeout=args.interval + 30):
                print("gpu_compare: the monitor stopped polling", file=sys.stderr)
                return 1
            snap = monitor.snapshot()
            try:
                smi_rows = read_nvidia_smi(smi)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                print(f"gpu_compare: nvidia-smi failed: {exc}", file=sys.stderr)
                return 1
            for gpu in snap["gpus"]:
                used = None if gpu["memory_used"] is None else gpu["memory_used"] / MiB
                total = None if gpu["memory_total"] is None else gpu["memory_total"] / MiB
                reserved = None if gpu["memory_reserved"] is None else gpu["memory_reserved"] / MiB
                smi_used, smi_total = smi_rows.pop(gpu["index"], (None, None))
                diffs = (_difference(used, smi_used), _difference(total, smi_total))
                mismatched |= None in diffs
                worst = max([worst] + [abs(d) for d in diffs if d is not None])
                print(ROW.format(round_no, gpu["index"], _show(used), _show(smi_used), _show(diffs[0]),
                                 _show(total), _show(smi_total), _show(diffs[1]), _show(reserved)))
                if gpu["errors"]:
                    print(f"      gpu {gpu['index']} errors: {gpu['errors']}")
            for index in smi_rows:  # GPUs nvidia-smi sees and the monitor does not
                mismatched = True
                print(f"      gpu {index}: listed by nvidia-smi only")
        print(f"largest difference: {worst:.1f} MiB (tolerance {args.tolerance_mib:g} MiB)")
        if mismatched:
            print("some figure was missing on one side (n/a above)")
        return 0 if worst <= args.tolerance_mib and not mismatched else 1
    finally:
        monitor.stop(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
