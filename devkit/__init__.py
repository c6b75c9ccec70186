"""Dev tooling: the demo, benchmarks, replay scripting, scripted callers, child-process helpers and the
embedded broker (`callstream dev up|down|status`, `broker`).

It may import anything, the sandbox included; no production package imports it (tests/test_layering.py).
"""
