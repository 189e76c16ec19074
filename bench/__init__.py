"""nextplay's benchmarks: `python -m bench.run [--quick]` prints how close each stage is to its limit.

Every figure is a ratio of two runs in the same invocation on the same input, or a rate whose
meaning is spelled out in docs/benchmarks.md, because the machines these run on are small and
shared: absolute seconds drift with whatever else runs, ratios of interleaved runs drift far less.
Benchmarks print figures; they never pass or fail (bench/test_bench_smoke.py only checks that the
harness produces every figure).
"""
