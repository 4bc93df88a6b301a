"""Throughput benchmarks behind `mmtm bench loader|train|render`, one module each; results are dicts of figures
plus the config and machine they were measured on, which `benchmarks/` records."""
