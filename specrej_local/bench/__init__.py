"""`specrej-local bench`: what Speculative Rejection buys over Best-of-N, measured on this machine.

- `metrics`: the figures, as pure functions (improvement score, speedups, totals).
- `runners`: the runs (quality at equal N and equal memory, engine throughput per KV layout).
- `report`: tables, the plot and the printed summary.
- `pools`, `replay`, `compute`, `compute_report`: the compute study (`--compute`): Best-of-N pools,
  schedules replayed on them by the decoder itself, reward against compute and its speedups.
- `continuous` (`--continuous`): continuous batching against one prompt at a time, in one process.
- `serve_load`, `local_server` (`--serve-load`): a `serve` child on loopback under concurrent clients.
- `command`: the click command and its presets.
"""
from .command import bench_command

__all__ = ["bench_command"]
