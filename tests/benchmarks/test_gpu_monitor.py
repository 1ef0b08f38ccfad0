"""`benchmarks/gpu_monitor.py` on the CPU: parsing nvidia-smi's lines, and the monitor driven by a fake nvidia-smi."""

import stat
import time

import pytest

from benchmarks.gpu_monitor import GpuMonitor, describe_reasons, parse_sample


def fake_nvidia_smi(tmp_path, body: str) -> str:
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_parse_sample_reads_clock_power_and_reasons():
    assert parse_sample("1755, 612.34, 0x0000000000000004") == (1755.0, 612.34, 4)
    assert parse_sample("1980, [N/A], 0x0000000000000000") == (1980.0, None, 0)


def test_parse_sample_names_a_malformed_line():
    with pytest.raises(ValueError, match="'1755, 612.34'"):
        parse_sample("1755, 612.34")


def test_describe_reasons_names_each_bit():
    assert describe_reasons(0) == "none"
    assert describe_reasons(0x4 | 0x40) == "software power cap, hardware thermal"
    assert describe_reasons(0x4 | 0x10000) == "software power cap, 0x10000"


def test_monitor_summarises_the_samples_of_a_fake_nvidia_smi(tmp_path):
    command = fake_nvidia_smi(tmp_path, 'echo "1500, 650.5, 0x0000000000000004"')
    with GpuMonitor(interval_s=0.01, command=command) as monitor:
        deadline = time.time() + 10
        while len(monitor.samples) < 3 and time.time() < deadline:
            time.sleep(0.01)
    summary = monitor.summary()
    assert summary["SM MHz"] == summary["SM MHz min"] == 1500.0
    assert summary["power W"] == 650.5
    assert summary["clock limits"].startswith("software power cap (")


def test_monitor_reports_a_missing_or_failing_nvidia_smi(tmp_path):
    with GpuMonitor(command=str(tmp_path / "absent")) as monitor:
        pass
    assert monitor.summary() == {"clock limits": f"not sampled: {tmp_path / 'absent'} not found"}

    command = fake_nvidia_smi(tmp_path, 'echo "no GPU" >&2; exit 3')
    with GpuMonitor(interval_s=0.01, command=command) as monitor:
        deadline = time.time() + 10
        while monitor.error is None and time.time() < deadline:
            time.sleep(0.01)
    assert "exited 3: no GPU" in monitor.summary()["clock limits"]
    assert "SM MHz" not in monitor.summary()
