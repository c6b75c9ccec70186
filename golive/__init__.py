"""Go-live of a practice: the scenario catalogue run against a sandbox mirror (`callstream golive check`)
and the phase gate that reads its results (`callstream golive promote`).

The catalogue is data (``scenarios/*.yaml``), validated by ``catalogue``; ``harness`` plays it through a
real worker against the mirrored sandbox; ``runs`` keeps every run's result durably; ``gate`` decides a
promotion from those results, the audit store and the deployment's alert rules.

The check side (``catalogue``, ``callers``, ``harness``, ``check``) is built on the dev tooling: it drives the
sandbox and devkit's scripted callers, which is why no production package imports golive; the gate side
(``gate``, ``runs``, ``cli``) imports neither (tests/test_layering.py holds both rules).
"""
