"""EMA / ModMed PM web automation (Playwright + Debian Chromium) for what ModMed's FHIR API does not cover.

Modules: ``session`` (the browser and the per-practice sessions with their upkeep), ``keeper`` (one
practice's signed-in context, single-attempt login and lockout), ``page`` (the strict page lent to a
command), ``commands`` (the EmaPort operations), ``locks`` (operator-cleared lock state), ``evidence``
(failure screenshots for operators), ``screens`` (the closed set of screens and strict value readers),
``directory`` (provider/room names → ids), ``results``, ``errors`` and ``cli`` (`callstream ema`); the
screen-latency benchmark is devkit.bench_ema.
Submodules are imported explicitly so `callstream ema status` does not load Playwright.
"""
