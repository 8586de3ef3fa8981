"""Runner: turns a playbook plan into actions on a lab and records a timeline.

Must not render reports; it hands a timeline and a verdict to the report layer.
"""
