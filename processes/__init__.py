"""Composition roots: the commands whose process assembles parts of several applications.

`callstream sinks run` (sinks) is the audit sinks plus what the applications add to them: the review items and
digest endpoints of the audit read API, the daily digest sender. `callstream audit` (audit) reads the audit
trail through that API or the store, with the call's review items, and renders the PDF (qa). Lower packages
take those parts as small interfaces (sinks.process.Additions, sinks.read_api.ReviewItems) and never import
the applications; this package, in the applications' layer, is where they meet (tests/test_layering.py).
"""
