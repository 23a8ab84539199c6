"""meshcli's benchmarks: `python -m benchmarks` (data plane, demo, CLI) and single-purpose scripts."""
