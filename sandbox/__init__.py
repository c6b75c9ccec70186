"""ModMed sandbox emulator: proprietary and certified FHIR APIs plus EMA/PM screens, per practice.

Entry points: `sandbox.cli.main` (`callstream sandbox ...`), `sandbox.app.create_app`,
`sandbox.generator.build_world`. See docs/sandbox.md.
"""
