"""EMA / ModMed PM web automation (Playwright + Debian Chromium) for what ModMed's FHIR API does not cover.

Modules: ``session`` (browser, per-practice signed-in sessions, single-attempt login and lockout),
``commands`` (the EmaPort operations), ``locks`` (operator-cleared lock state), ``evidence`` (failure
screenshots for operators), ``screens`` (the closed set of screens and strict value readers),
``directory`` (provider/room names → ids), ``results``, ``errors``, ``cli`` (`callstream ema`) and
``bench`` (screen latencies against a sandbox).
Submodules are imported explicitly so `callstream ema status` does not load Playwright.
"""
