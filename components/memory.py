"""Memory over time, per stage: a background sampler of process-tree RSS and GPU memory.

Peaks are kept per stage (model loading never poses as inference). GPU memory is read
through NVML where an engine (vLLM) runs in another process, and through torch's
allocator counters for this process.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psutil

_active: MemoryMonitor | None = None
IDLE = "idle"  # between stages: sampled, but not an enclosing stage of anything


def _nvml_handles() -> list[Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no driver, no GPU, or no NVML library: CPU-only sampling
        return []


class MemoryMonitor:
    """Samples every ``interval`` seconds on a daemon thread; ``stage()`` names what runs."""

    def __init__(self, interval: float = 0.5, keep_samples: int = 20_000) -> None:
        self.interval = interval
        self.keep_samples = keep_samples
        self.samples: list[dict[str, Any]] = []
        self.stages: dict[str, dict[str, Any]] = {}
        self.stage_name = IDLE
        self._stack: list[str] = []
        self._children: list[psutil.Process] | None = None
        self._samples_taken = 0
        self._epoch = 0
        self._process = psutil.Process()
        self._nvml = _nvml_handles()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._wall0 = time.time()
        self.sampling_seconds = 0.0

    def _rss(self) -> int:
        # Listing children scans /proc (about 1 ms), so the list is refreshed every 8th sample.
        if self._children is None or self._samples_taken % 8 == 0:
            with contextlib.suppress(psutil.Error):
                self._children = self._process.children(recursive=True)
        total = self._process.memory_info().rss
        for child in self._children or []:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _gpu(self) -> list[dict[str, int]]:
        devices = []
        if self._nvml:
            import pynvml

            for index, handle in enumerate(self._nvml):
                info = pynvml.nvmlDeviceGetMemoryInfo(handle)
                devices.append({"device": index, "used": int(info.used)})
        torch = _torch_if_cuda()
        if torch is not None:
            for index in range(torch.cuda.device_count()):
                entry = next((d for d in devices if d["device"] == index), None)
                if entry is None:
                    entry = {"device": index}
                    devices.append(entry)
                # Peak counters (reset at each stage) catch spikes between two samples.
                entry["allocated"] = int(torch.cuda.max_memory_allocated(index))
                entry["reserved"] = int(torch.cuda.max_memory_reserved(index))
        return devices

    def sample(self) -> None:
        """Measures outside the lock, credits under it: to the running stage and every
        stage it is nested in. A sample that straddles a stage switch is dropped, so it
        can never be credited to the wrong stage."""
        cpu_started = time.thread_time()
        with self._lock:
            outer = [n for n in self._stack if n != IDLE]
            epoch, chain = self._epoch, [*outer, self.stage_name]
        started = time.perf_counter()
        rss, gpu = self._rss(), self._gpu()
        with self._lock:
            self._samples_taken += 1
            if epoch == self._epoch:
                by_device = {
                    d["device"]: {k: v for k, v in d.items() if k != "device"} for d in gpu
                }
                for name in chain:
                    stage = self.stages.setdefault(name, _new_stage())
                    stage["peak_rss_bytes"] = max(stage["peak_rss_bytes"], rss)
                    merge_gpu_peaks(stage["peak_gpu_bytes"], by_device)
                if len(self.samples) < self.keep_samples:
                    self.samples.append(
                        {
                            "t": round(started - self._t0, 3),
                            "stage": chain[-1],
                            "rss_bytes": rss,
                            "gpu": gpu,
                        }
                    )
            # CPU time of this thread: what sampling costs the run, whatever the GIL waits.
            self.sampling_seconds += time.thread_time() - cpu_started

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.sample()

    def start(self) -> MemoryMonitor:
        global _active
        self._t0, self._wall0 = time.perf_counter(), time.time()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-monitor", daemon=True)
        self._thread.start()
        _active = self
        return self

    def stop(self) -> None:
        global _active
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if _active is self:
            _active = None

    def enter(self, name: str) -> None:
        """Switches stage; peaks restart from zero (torch's CUDA peak counter too).

        Stages nest: a step's sub-stages (model_load, generate) take over while they run.
        """
        with self._lock:
            self._epoch += 1
            self._stack.append(self.stage_name)
            self.stage_name = name
            stage = self.stages.setdefault(name, _new_stage())
            stage["started"] = time.perf_counter() - self._t0
        torch = _torch_if_cuda()
        if torch is not None:
            for index in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(index)
        with self._lock:
            self._epoch += 1  # drops samples that read the counters before the reset
        self.sample()

    def leave(self, name: str) -> None:
        self.sample()
        with self._lock:
            stage = self.stages[name]
            stage["seconds"] = stage.get("seconds", 0.0) + (
                time.perf_counter() - self._t0 - stage.pop("started")
            )
            self.stage_name = self._stack.pop() if self._stack else IDLE
            self._epoch += 1

    def report(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        with self._lock:
            stages = {
                name: {k: v for k, v in data.items() if k != "started"}
                for name, data in self.stages.items()
            }
            peak_rss = max((s["peak_rss_bytes"] for s in stages.values()), default=0)
            peak_gpu: dict[str, dict[str, int]] = {}
            for stage in stages.values():
                merge_gpu_peaks(peak_gpu, stage["peak_gpu_bytes"])
            return {
                "started_epoch": self._wall0,
                "interval_seconds": self.interval,
                "samples_kept": len(self.samples),
                "sampler_overhead_fraction": self.sampling_seconds / elapsed if elapsed else 0.0,
                "sampling_seconds": self.sampling_seconds,
                "elapsed_seconds": elapsed,
                "peak_rss_bytes": peak_rss,
                "peak_gpu_bytes": peak_gpu,
                "stages": stages,
                "samples": list(self.samples),
            }


def merge_gpu_peaks(
    into: dict[str, dict[str, int]], peaks: Mapping[Any, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """Field-wise maximum per device (used/allocated/reserved), in place."""
    for device, fields in peaks.items():
        target = into.setdefault(str(device), {})
        for field, value in fields.items():
            target[field] = max(target.get(field, 0), value)
    return into


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One memory_usage.json for a run from its steps' own reports (one sampler per step,
    wherever it ran): seconds add up, peaks take the maximum, samples share one clock."""
    merged: dict[str, Any] = {"steps": {}, "stages": {}, "peak_gpu_bytes": {}, "samples": []}
    t0 = min((r.get("started_epoch", 0.0) for r in reports), default=0.0)
    for report in reports:
        step = report.get("step", "?")
        offset = report.get("started_epoch", t0) - t0
        merged["steps"][step] = {"sampler_overhead_fraction": report["sampler_overhead_fraction"]}
        for name, data in report["stages"].items():
            if name == IDLE:
                continue
            if name not in merged["stages"]:
                merged["stages"][name] = {**data, "peak_gpu_bytes": dict(data["peak_gpu_bytes"])}
                continue
            into = merged["stages"][name]
            into["seconds"] += data["seconds"]
            into["peak_rss_bytes"] = max(into["peak_rss_bytes"], data["peak_rss_bytes"])
            merge_gpu_peaks(into["peak_gpu_bytes"], data["peak_gpu_bytes"])
        merged["samples"].extend(
            {**s, "t": round(s["t"] + offset, 3), "step": step} for s in report["samples"]
        )
        merge_gpu_peaks(merged["peak_gpu_bytes"], report["peak_gpu_bytes"])
    merged["interval_seconds"] = max((r["interval_seconds"] for r in reports), default=0.0)
    merged["peak_rss_bytes"] = max((r["peak_rss_bytes"] for r in reports), default=0)
    elapsed = sum(r.get("elapsed_seconds", 0.0) for r in reports)
    merged["sampler_overhead_fraction"] = (
        sum(r.get("sampling_seconds", 0.0) for r in reports) / elapsed if elapsed else 0.0
    )
    return merged


def gib(value: int | None) -> float | None:
    """Bytes in GiB for tables and summaries (None when nothing was measured)."""
    return None if not value else round(value / 2**30, 3)


def highest_gpu_bytes(peak_gpu: Mapping[str, Mapping[str, int]] | None) -> int | None:
    """The single largest GPU figure of a report, for summaries."""
    return max((max(d.values()) for d in (peak_gpu or {}).values() if d), default=None)


def _new_stage() -> dict[str, Any]:
    return {"peak_rss_bytes": 0, "peak_gpu_bytes": {}, "seconds": 0.0}


def _torch_if_cuda():
    """torch only if this process already imported it and initialized CUDA.

    Never imports torch, and never calls ``is_available()`` from the sampler thread: its first
    call queries the driver (a noticeable share of a short run's CPU on a GPU machine).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch if torch.cuda.is_initialized() else None
    except Exception:
        return None


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Names the running stage on the active monitor; a no-op when none is running."""
    monitor = _active
    if monitor is None:
        yield
        return
    monitor.enter(name)
    try:
        yield
    finally:
        monitor.leave(name)
