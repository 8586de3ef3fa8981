"""SPICE: the real client (remote-viewer under Xvfb), the outcome classifier, the fix.

Judges what the client saw from its own log and the server-side graphics
events. Must not know about playbooks or reports.
"""
