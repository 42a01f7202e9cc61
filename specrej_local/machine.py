"""What this machine offers the process: CPUs it may use, memory it can still get.

Kept apart from llama/context.py so that checks on user settings need no llama.cpp.
"""
import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_memory_bytes():
    """Memory the system can still give (Linux); None where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
