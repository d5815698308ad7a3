"""What every benchmark script records about the machine it ran on."""

import os
import platform


def machine(**extra) -> dict:
    """CPUs, CPU model, Python and platform, the load average now, and `extra`."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()],
            **extra}
