"""The clocks a benchmark ran at: SM clock, power draw and clock-event reasons, sampled with `nvidia-smi` in a thread.

Sustained work can clock a GPU down (an H100 SXM at its 700 W cap, or hot), so two readings of the same code on two
machines, or in a 3-step and a 20-step run, can differ by more than a change being measured. A row that says which
clock it ran at, and why the GPU held it there, tells the two apart.

    with GpuMonitor() as monitor:
        ...  # the timed work
    row.update(monitor.summary())   # {"SM MHz": 1710.0, "SM MHz min": 1650.0, "power W": 690.1, "clock limits": "..."}
"""

from __future__ import annotations

import shutil
import subprocess
import threading

import torch

QUERY = "clocks.sm,power.draw,clocks_throttle_reasons.active"
# NVML's clock-event reason bits (nvmlClocksEventReason*), the ones that hold the clock below its maximum.
REASONS = {
    0x1: "idle",
    0x2: "application clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal",
    0x40: "hardware thermal",
    0x80: "hardware power brake",
    0x100: "display clocks",
}
COLUMNS = ["SM MHz", "SM MHz min", "power W", "clock limits"]


def parse_sample(line: str) -> tuple[float | None, float | None, int]:
    """`'1755, 612.34, 0x0000000000000004'` -> (1755.0, 612.34, 4); a field nvidia-smi cannot read (`[N/A]`) -> None.

    Raises ValueError naming the line when it does not have the three queried fields.
    """
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 3:
        raise ValueError(f"nvidia-smi line {line!r}: expected 3 fields ({QUERY}), got {len(fields)}")

    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:  # "[N/A]", "[Not Supported]"
            return None

    mhz, watts, reasons = fields
    return number(mhz), number(watts), int(reasons, 16) if reasons.startswith("0x") else 0


def describe_reasons(mask: int) -> str:
    """The reason bits set in `mask`, by name ("none" for 0; unknown bits as hex)."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    unknown = mask & ~sum(REASONS)
    if unknown:
        names.append(hex(unknown))
    return ", ".join(names) or "none"


def device_selector(index: int) -> str:
    """nvidia-smi's `-i` for CUDA device `index`: its UUID (CUDA and nvidia-smi may number GPUs differently)."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else str(index)


class GpuMonitor:
    """Context manager: samples the GPU every `interval_s` while its block runs; `summary()` reads the samples.

    Where nvidia-smi is missing or fails, `summary()` says so in its "clock limits" field instead of guessing.
    """

    def __init__(self, device: int | None = None, interval_s: float = 0.5, command: str = "nvidia-smi"):
        self.interval_s = interval_s
        self.command = command
        self.device = device
        self.samples: list[tuple[float | None, float | None, int]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuMonitor:
        if shutil.which(self.command) is None:
            self.error = f"{self.command} not found"
            return self
        if self.device is None and torch.cuda.is_available():
            self.device = torch.cuda.current_device()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        argv = [self.command, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]
        if self.device is not None:
            argv += ["-i", device_selector(self.device)]
        while True:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:200]}")
                self.samples.append(parse_sample(done.stdout.strip().splitlines()[0]))
            except (OSError, RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as err:
                self.error = str(err) or type(err).__name__
                return  # one failure is reported; sampling a broken command again would only repeat it
            if self._stop.wait(self.interval_s):
                return

    def summary(self) -> dict:
        """Mean and lowest SM clock (MHz), mean power (W) and every clock-event reason seen, over the samples."""
        if self.error is not None or not self.samples:
            return {"clock limits": f"not sampled: {self.error or 'no sample (the block ran shorter than one query)'}"}
        mhz = [s[0] for s in self.samples if s[0] is not None]
        watts = [s[1] for s in self.samples if s[1] is not None]
        mask = 0
        for sample in self.samples:
            mask |= sample[2]
        summary = {"clock limits": describe_reasons(mask) + f" ({len(self.samples)} samples)"}
        if mhz:
            summary.update({"SM MHz": sum(mhz) / len(mhz), "SM MHz min": min(mhz)})
        if watts:
            summary["power W"] = sum(watts) / len(watts)
        return summary
