"""Virt: guest images, accel probing, libvirt domains, live migration.

Talks to libvirtd only through libvirt-python (never virsh). Must not know
about SPICE clients, playbooks or reports.
"""
