"""The runtime that starts ranks, watches them and stops them: launchers, the run lock, quiet ranks."""
