"""Report: result.json, JUnit and HTML, built from a run's timeline and verdict alone."""
