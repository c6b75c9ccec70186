"""Go-live of a practice: the scenario catalogue run against a sandbox mirror (`callstream golive check`)
and the phase gate that reads its results (`callstream golive promote`).

The catalogue is data (``scenarios/*.yaml``), validated by ``catalogue``; ``harness`` plays it through a
real worker against the mirrored sandbox; ``runs`` keeps every run's result durably; ``gate`` decides a
promotion from those results, the audit store and the deployment's alert rules.
"""
