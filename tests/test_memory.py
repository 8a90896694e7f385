import mmap
import time

from components.memory import MemoryMonitor, stage


def test_stages_have_their_own_peaks_and_seconds():
    monitor = MemoryMonitor(interval=0.01).start()
    try:
        with stage("big"):
            # Fresh pages from the kernel: a bytearray may reuse memory the process already
            # holds (freed by earlier tests, kept by malloc), and then RSS would not rise.
            blob = mmap.mmap(-1, 200 * 2**20)
            blob[::4096] = b"x" * len(blob[::4096])
            time.sleep(0.05)
            blob.close()
        with stage("small"):
            time.sleep(0.05)
    finally:
        monitor.stop()
    report = monitor.report()
    big, small = report["stages"]["big"], report["stages"]["small"]
    assert big["peak_rss_bytes"] - small["peak_rss_bytes"] > 150 * 2**20
    assert big["seconds"] >= 0.05 and small["seconds"] >= 0.05
    assert report["peak_rss_bytes"] == big["peak_rss_bytes"]
    assert {s["stage"] for s in report["samples"]} >= {"big", "small"}


def test_nested_stages_hand_back_to_the_outer_one():
    monitor = MemoryMonitor(interval=10).start()
    try:
        with stage("inference"):
            with stage("model_load"):
                assert monitor.stage_name == "model_load"
            assert monitor.stage_name == "inference"
    finally:
        monitor.stop()
    assert set(monitor.report()["stages"]) >= {"inference", "model_load"}


def test_stage_without_a_monitor_is_a_no_op():
    ran = []
    with stage("anything"):
        ran.append(True)
    assert ran == [True]
    monitor = MemoryMonitor(interval=10).start()  # a later monitor starts with no stage
    try:
        assert monitor.stage_name != "anything"
    finally:
        monitor.stop()
    assert "anything" not in monitor.report()["stages"]


def test_reports_of_several_steps_merge_into_one():
    """Each step samples on its own (on ClearML, on its own machine); the run's report adds
    their seconds, keeps their peaks and puts every sample on one clock."""
    from components.memory import merge_reports

    reports = []
    for name in ("load", "generate"):
        monitor = MemoryMonitor(interval=0.01).start()
        with stage(name):
            time.sleep(0.03)
        monitor.stop()
        reports.append({"step": name, **monitor.report()})
    merged = merge_reports(reports)
    assert set(merged["steps"]) == {"load", "generate"}
    assert set(merged["stages"]) >= {"load", "generate"}
    assert merged["peak_rss_bytes"] == max(r["peak_rss_bytes"] for r in reports)
    times = [s["t"] for s in merged["samples"] if s["step"] == "generate"]
    assert min(times) >= max(s["t"] for s in merged["samples"] if s["step"] == "load") - 0.01
    sampled = sum(r["sampling_seconds"] for r in reports)
    elapsed = sum(r["elapsed_seconds"] for r in reports)
    assert merged["sampler_overhead_fraction"] == sampled / elapsed
