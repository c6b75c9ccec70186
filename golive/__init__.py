"""Go-live of a practice: the scenario catalogue run against a sandbox mirror (`callstream golive check`)
and the phase gate that reads its results (`callstream golive promote`).

The catalogue is data (``scenarios/*.yaml``), validated by ``catalogue``; ``planning`` binds it to sandbox
patients and calls, ``harness`` plays it through a real worker against the mirrored sandbox (reading the audit
with ``audit_collector``, the intake SMS with ``sms_receiver``) and ``scenario_checks`` checks what each call
left behind; ``runs`` keeps every run's result durably; ``gate`` decides a promotion from those results, the
audit store and the deployment's alert rules.

The check side (``catalogue``, ``callers``, ``planning``, ``harness``, ``scenario_checks``, ``audit_collector``,
``sms_receiver``, ``check``) is built on the dev tooling: it drives the sandbox and devkit's scripted callers,
which is why no production package imports golive; the gate side (``gate``, ``runs``, ``cli``) imports
neither (tests/test_layering.py holds both rules).
"""
