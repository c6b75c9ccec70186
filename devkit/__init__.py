"""Dev tooling: the demo, benchmarks, replay scripting, scripted callers and child-process helpers.

It may import anything, the sandbox included; no production package imports it (tests/test_layering.py).
"""
