"""GpuMonitor and NvmlReader against the scripted NVML of conftest.py."""

from __future__ import annotations

import json
import logging
import os

import psutil
import pynvml
import pytest

GiB = 1024 ** 3
MiB = 1024 ** 2


def gpu_warnings(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "ollamad.gpu" and r.levelno == logging.WARNING and text in r.getMessage()]


def test_memory_growing_across_polls_is_seen(fake_nvml, start_monitor, poll_until):
    gpu = fake_nvml.add_gpu(memory_used=1 * GiB)
    monitor = start_monitor(fake_nvml)
    last_poll = 0
    for used in (2 * GiB, 5 * GiB, 9 * GiB):
        gpu.memory_used = used
        snap = poll_until(monitor, lambda s: s["gpus"] and s["gpus"][0]["memory_used"] == used)
        assert snap["poll_count"] > last_poll
        last_poll = snap["poll_count"]
        reading = snap["gpus"][0]
        # v2 figures: driver-reserved memory is not "used", as in nvidia-smi
        assert reading["memory_reserved"] == 512 * MiB
        assert reading["memory_free"] == 80 * GiB - used - 512 * MiB
    assert snap["available"] is True and snap["reason"] is None
    assert snap["driver_version"] == "550.54.15"
    assert snap["errors"] == [] and reading["errors"] == {}
    assert reading == {**reading, "index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GiB,
                       "utilization_gpu": 10, "utilization_memory": 5, "temperature_c": 40,
                       "power_draw_w": 70.0, "power_limit_w": 700.0}
    json.dumps(snap)  # plain JSON for the `gpu` op


def test_gpu_lost_mid_poll_is_reported_for_that_gpu_and_nvml_is_reinitialised(
        fake_nvml, start_monitor, poll_until, caplog):
    caplog.set_level(logging.INFO, logger="ollamad.gpu")
    fake_nvml.add_gpu(memory_used=3 * GiB)
    lost = fake_nvml.add_gpu()
    lost.failures["nvmlDeviceGetMemoryInfo_v2"] = pynvml.NVMLError_GpuIsLost
    monitor = start_monitor(fake_nvml, reinit_after_failures=3)

    snap = poll_until(monitor, lambda s: s["reinit_count"] >= 2)
    healthy, gone = snap["gpus"]
    assert healthy["memory_used"] == 3 * GiB and healthy["errors"] == {}
    assert gone["name"] == "NVIDIA H100 80GB HBM3"  # read before the device went
    assert gone["memory_used"] is None
    assert gone["errors"] == {"device": "memory: GPU is lost (NVMLError_GpuIsLost)"}
    assert snap["errors"] == ["GPU 1: memory: GPU is lost (NVMLError_GpuIsLost)"]
    assert fake_nvml.calls["nvmlInit"] >= 3 and fake_nvml.calls["nvmlShutdown"] >= 2
    assert monitor.is_running()
    # said once, not on every poll or every re-initialisation
    assert len(gpu_warnings(caplog, "GPU is lost")) == 1
    assert len(gpu_warnings(caplog, "re-initialising NVML")) == 1

    lost.failures.clear()
    snap = poll_until(monitor, lambda s: s["gpus"][1]["memory_used"] is not None)
    assert snap["errors"] == [] and snap["gpus"][1]["errors"] == {}
    assert any("clean again" in r.getMessage() for r in caplog.records)


def test_nvml_failing_to_count_gpus_fails_the_poll_and_reinitialises(fake_nvml, start_monitor, poll_until):
    fake_nvml.add_gpu()
    monitor = start_monitor(fake_nvml, reinit_after_failures=2)
    poll_until(monitor, lambda s: s["available"])
    fake_nvml.count_error = pynvml.NVMLError_Unknown
    snap = poll_until(monitor, lambda s: s["errors"])
    assert snap["available"] is True and snap["gpus"] == []
    assert snap["errors"] == ["reading GPUs: Unknown Error (NVMLError_Unknown)"]
    # the count inside the new nvmlInit fails too, so re-initialising turns the watch off
    snap = poll_until(monitor, lambda s: not s["available"])
    assert snap["reinit_count"] == 1
    assert snap["reason"] == "NVML cannot count the GPUs: Unknown Error (NVMLError_Unknown)"
    assert fake_nvml.initialised == 0  # shut down again after the failed open


@pytest.mark.parametrize("error, words", [
    (pynvml.NVMLError_LibraryNotFound,
     "NVML library not found (NVMLError_LibraryNotFound): no NVIDIA driver on this host"),
    (pynvml.NVMLError_DriverNotLoaded,
     "NVIDIA driver not loaded (NVMLError_DriverNotLoaded): the kernel module is not running"),
])
def test_no_gpu_is_reported_plainly_logged_once_and_retried_rarely(
        error, words, fake_nvml, fake_clock, start_monitor, poll_until, caplog):
    caplog.set_level(logging.INFO, logger="ollamad.gpu")
    fake_nvml.add_gpu()
    fake_nvml.init_error = error
    monitor = start_monitor(fake_nvml, clock=fake_clock, init_retry_s=60)

    assert monitor.wait_for_poll(50, timeout=10)
    snap = monitor.snapshot()
    assert snap["available"] is False and snap["reason"] == words
    assert snap["gpus"] == [] and snap["ollama_vram_bytes"] is None
    assert fake_nvml.calls["nvmlInit"] == 1  # no retry before init_retry_s
    assert len(gpu_warnings(caplog, words)) == 1

    fake_clock.advance(60)
    poll_until(monitor, lambda s: fake_nvml.calls["nvmlInit"] == 2)
    assert len(gpu_warnings(caplog, words)) == 1  # same reason, not logged again

    fake_nvml.init_error = None  # the driver came back
    fake_clock.advance(60)
    snap = poll_until(monitor, lambda s: s["available"])
    assert snap["reason"] is None and len(snap["gpus"]) == 1
    assert any("GPU watch on" in r.getMessage() for r in caplog.records)


def test_unsupported_fields_are_noted_and_the_rest_is_read(fake_nvml, start_monitor, poll_until):
    gpu = fake_nvml.add_gpu(compute_processes=[(4242, 2 * GiB)])
    for function in ("nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage",
                     "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetUtilizationRates",
                     "nvmlDeviceGetGraphicsRunningProcesses"):
        gpu.failures[function] = pynvml.NVMLError_NotSupported
    monitor = start_monitor(fake_nvml)
    assert monitor.wait_for_poll(20, timeout=10)
    reading = monitor.snapshot()["gpus"][0]
    assert reading["errors"] == {key: "Not Supported (NVMLError_NotSupported)" for key in
                                 ("temperature_c", "power_draw_w", "power_limit_w", "utilization",
                                  "graphics_processes")}
    assert (reading["temperature_c"], reading["power_draw_w"], reading["utilization_gpu"]) == (None,) * 3
    assert reading["memory_used"] == 1 * GiB and reading["uuid"].startswith("GPU-")
    assert reading["processes"] == [{"pid": 4242, "used_memory": 2 * GiB, "ollama": False}]
    snap = monitor.snapshot()
    assert snap["errors"] == [] and snap["reinit_count"] == 0
    assert fake_nvml.calls["nvmlInit"] == 1
    metrics = monitor.metrics()
    assert metrics["gpu_temperature_max_c"] is None and metrics["gpu_memory_used_bytes"] == 1 * GiB


def test_memory_info_falls_back_to_v1_on_old_drivers(fake_nvml, start_monitor, poll_until):
    gpu = fake_nvml.add_gpu(memory_used=4 * GiB)
    gpu.failures["nvmlDeviceGetMemoryInfo_v2"] = pynvml.NVMLError_FunctionNotFound
    monitor = start_monitor(fake_nvml)
    reading = poll_until(monitor, lambda s: s["gpus"])["gpus"][0]
    assert reading["memory_used"] == 4 * GiB + 512 * MiB  # v1 counts the reserved part
    assert reading["memory_reserved"] is None and reading["errors"] == {}


def test_gpu_memory_of_a_real_process_tree_is_attributed_to_ollama(
        fake_nvml, process_tree, start_monitor, poll_until):
    parent_pid, child_pid, tree_pids = process_tree
    stranger = os.getpid()  # this test process: on the GPU, not Ollama's
    assert tree_pids() == {parent_pid, child_pid}
    fake_nvml.add_gpu(compute_processes=[(parent_pid, 1 * GiB), (child_pid, 3 * GiB),
                                         (stranger, 512 * MiB), (1, None)],
                      graphics_processes=[(child_pid, 3 * GiB)])  # listed twice, counted once
    fake_nvml.add_gpu(compute_processes=[(child_pid, 2 * GiB)])
    monitor = start_monitor(fake_nvml, ollama_pids=tree_pids)

    snap = poll_until(monitor, lambda s: len(s["gpus"]) == 2)
    first, second = snap["gpus"]
    assert first["processes"] == [
        {"pid": parent_pid, "used_memory": 1 * GiB, "ollama": True},
        {"pid": child_pid, "used_memory": 3 * GiB, "ollama": True},
        {"pid": stranger, "used_memory": 512 * MiB, "ollama": False},
        {"pid": 1, "used_memory": None, "ollama": False},
    ]
    assert (first["ollama_memory"], first["other_memory"]) == (4 * GiB, 512 * MiB)
    assert (second["ollama_memory"], second["other_memory"]) == (2 * GiB, 0)
    assert (snap["ollama_vram_bytes"], snap["other_vram_bytes"]) == (6 * GiB, 512 * MiB)
    assert monitor.summary()["ollama_vram_bytes"] == 6 * GiB

    os.kill(child_pid, 9)  # a runner dies; once reaped, its pid leaves the tree
    snap = poll_until(monitor, lambda s: s["ollama_vram_bytes"] == 1 * GiB)
    assert snap["other_vram_bytes"] == 512 * MiB + 3 * GiB + 2 * GiB


def test_failing_pid_listing_leaves_attribution_unknown(fake_nvml, start_monitor, poll_until):
    fake_nvml.add_gpu(compute_processes=[(4242, 1 * GiB)])

    def broken_pids():
        raise psutil.NoSuchProcess(4242)

    monitor = start_monitor(fake_nvml, ollama_pids=broken_pids)
    snap = poll_until(monitor, lambda s: s["gpus"])
    assert snap["ollama_vram_bytes"] is None and snap["gpus"][0]["ollama_memory"] is None
    assert snap["gpus"][0]["processes"][0]["ollama"] is None
    assert snap["errors"][0].startswith("listing Ollama's processes:")
    assert snap["reinit_count"] == 0  # not an NVML failure


def test_critical_xid_events_are_counted_logged_and_the_last_shown(
        fake_nvml, start_monitor, poll_until, caplog):
    caplog.set_level(logging.INFO, logger="ollamad.gpu")
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    monitor = start_monitor(fake_nvml)
    snap = poll_until(monitor, lambda s: s["available"])
    assert snap["xid_errors"] == {"supported": True, "reason": None, "count": 0, "last": None}

    fake_nvml.xid_queue.append((1, 79))
    snap = poll_until(monitor, lambda s: s["xid_errors"]["count"] == 1)
    last = snap["xid_errors"]["last"]
    assert (last["gpu_index"], last["xid"], last["meaning"]) == (1, 79, "GPU has fallen off the bus")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["GPU watch: GPU 1 reported critical XID 79 (GPU has fallen off the bus)"]

    fake_nvml.xid_queue.extend([(0, 48), (0, 1234)])
    snap = poll_until(monitor, lambda s: s["xid_errors"]["count"] == 3)
    assert snap["xid_errors"]["last"]["xid"] == 1234 and snap["xid_errors"]["last"]["meaning"] is None
    assert monitor.metrics()["xid_error_count"] == 3


def test_xid_events_not_supported_is_said_not_fatal(fake_nvml, start_monitor, poll_until):
    gpu = fake_nvml.add_gpu()
    gpu.failures["nvmlDeviceRegisterEvents"] = pynvml.NVMLError_NotSupported
    monitor = start_monitor(fake_nvml)
    snap = poll_until(monitor, lambda s: s["available"])
    assert snap["xid_errors"]["supported"] is False
    assert snap["xid_errors"]["reason"] == ("XID events not supported: "
                                            "GPU 0: Not Supported (NVMLError_NotSupported)")
    assert fake_nvml.open_event_sets == 0 and snap["gpus"][0]["memory_used"] == 1 * GiB


def test_names_as_bytes_from_old_pynvml_are_decoded(fake_nvml, start_monitor, poll_until):
    fake_nvml.names_as_bytes = True
    fake_nvml.add_gpu(name="Tesla T4")
    snap = poll_until(start_monitor(fake_nvml), lambda s: s["gpus"])
    assert snap["gpus"][0]["name"] == "Tesla T4" and snap["driver_version"] == "550.54.15"


def test_snapshot_is_a_copy_and_summary_metrics_are_compact(fake_nvml, start_monitor, poll_until):
    fake_nvml.add_gpu(memory_used=10 * GiB, temperature_c=61, utilization_gpu=80)
    fake_nvml.add_gpu(memory_used=20 * GiB, temperature_c=55, utilization_gpu=30)
    monitor = start_monitor(fake_nvml)
    snap = poll_until(monitor, lambda s: len(s["gpus"]) == 2)
    snap["gpus"].clear()
    assert len(monitor.snapshot()["gpus"]) == 2

    summary = monitor.summary()
    assert summary["available"] is True and summary["reason"] is None
    assert summary["gpus"][1] == {"index": 1, "name": "NVIDIA H100 80GB HBM3",
                                  "memory_used": 20 * GiB, "memory_total": 80 * GiB}
    metrics = monitor.metrics()
    assert {k: metrics[k] for k in ("gpu_available", "gpu_count", "gpu_memory_used_bytes",
                                    "gpu_memory_total_bytes", "ollama_vram_bytes",
                                    "gpu_utilization_max", "gpu_temperature_max_c",
                                    "gpu_power_draw_w")} == {
        "gpu_available": 1, "gpu_count": 2, "gpu_memory_used_bytes": 30 * GiB,
        "gpu_memory_total_bytes": 160 * GiB, "ollama_vram_bytes": 0,
        "gpu_utilization_max": 80, "gpu_temperature_max_c": 61, "gpu_power_draw_w": 140.0}
    json.dumps(summary), json.dumps(metrics)


def test_stop_shuts_nvml_down_and_frees_the_event_set(fake_nvml, start_monitor, poll_until):
    fake_nvml.add_gpu()
    monitor = start_monitor(fake_nvml)
    poll_until(monitor, lambda s: s["available"])
    assert fake_nvml.initialised == 1 and fake_nvml.open_event_sets == 1
    assert monitor.stop(timeout=5)
    assert not monitor.is_running()
    assert fake_nvml.initialised == 0 and fake_nvml.open_event_sets == 0


def test_snapshot_before_the_first_poll_says_so(fake_nvml):
    from ollamad.gpu import GpuMonitor

    monitor = GpuMonitor(interval=1.0, ollama_pids=set, nvml=fake_nvml)
    snap = monitor.snapshot()
    assert snap["available"] is False and snap["poll_count"] == 0
    assert snap["reason"] == "the GPU watch has not polled yet"
    assert monitor.stop(timeout=1)  # never started: nothing to wait for
    with pytest.raises(ValueError):
        GpuMonitor(interval=0, ollama_pids=set, nvml=fake_nvml)


def test_gpu_hidden_from_this_process_is_noted_not_counted_as_lost(fake_nvml, start_monitor, poll_until):
    fake_nvml.add_gpu(compute_processes=[(4242, 1 * GiB)])
    hidden = fake_nvml.add_gpu()
    hidden.failures["nvmlDeviceGetHandleByIndex"] = pynvml.NVMLError_NoPermission
    monitor = start_monitor(fake_nvml, reinit_after_failures=1)
    assert monitor.wait_for_poll(10, timeout=10)
    snap = monitor.snapshot()
    assert snap["gpus"][1]["errors"] == {"handle": "Insufficient Permissions (NVMLError_NoPermission)"}
    assert snap["reinit_count"] == 0 and snap["errors"] == []
    assert snap["gpus"][0]["ollama_memory"] == 0 and snap["gpus"][1]["ollama_memory"] is None
    assert snap["ollama_vram_bytes"] is None  # one GPU's processes are unknown
