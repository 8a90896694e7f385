import time

from components.memory import MemoryMonitor, stage


def test_stages_have_their_own_peaks_and_seconds():
    monitor = MemoryMonitor(interval=0.01).start()
    try:
        with stage("big"):
            blob = bytearray(200 * 2**20)
            blob[::4096] = b"x" * len(blob[::4096])
            time.sleep(0.05)
            del blob
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
    with stage("anything"):
        pass


def test_sampling_costs_under_one_percent():
    monitor = MemoryMonitor()
    for _ in range(50):
        monitor.sample()
    # CPU seconds per sample against the sampling interval.
    assert monitor.sampling_seconds / 50 / monitor.interval < 0.01
