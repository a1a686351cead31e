"""Peak resident memory of a process, for the memory tests' child processes (Linux)."""

from __future__ import annotations

#: Source of ``peak_since_reset`` for a child process started with ``python -c``.
PEAK_SINCE_RESET = '''
def peak_since_reset(reset=True):
    """VmHWM, the peak RSS of this process; then reset it to the current RSS.

    ru_maxrss would not do: Linux carries it over from the parent across fork and exec.
    Should the reset be refused, the peak includes earlier ones: an overestimate, never less.
    """
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return peak
'''
