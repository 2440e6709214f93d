"""Load tests and benchmarks: ``python -m loadtest.bench_core`` times the pure exchange core."""
