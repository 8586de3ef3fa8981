"""Report: JUnit, HTML and run comparisons, built from a run's result.json alone.

Owns: reading result.json back (`load`), the words for expected vs got (`text`),
junit.xml (`junit`), the timeline SVG (`svg`), the outcome matrix (`matrix`),
report.html (`html`), `compare` and writing both files (`write`).
Must not touch: labs, the runner's objects or any system state. It reads JSON and the
artifacts a run left, so a report can be rebuilt anywhere, later.
"""
