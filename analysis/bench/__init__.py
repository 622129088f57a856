"""Benchmarks of the hook Monitor: commands that write markdown tables under `benchmarks/`.

    python -m analysis.bench overhead   # the monitor's step-time and memory ratios, per statistic set
    python -m analysis.bench peers      # the monitor against other tools, on the same statistics
    python -m analysis.bench reductions # the activation reduction alone: one compiled pass or stock passes

Every step-time ratio comes from `timing.compare`: interleaved steps of identical model
copies in one process, medians of per-pair ratios.
"""
