"""Lab: a topology made real. Brings hosts, networks and libvirtds up and down.

Composes hosts, net and virt into one object the runner drives. Owns the lab
id, the state directory and the ledger walk of `testbed down`. Must not know
about playbooks, verdicts or reports.
"""
