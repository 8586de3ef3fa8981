"""Hosts: the one way to touch a machine of the lab.

A Host runs commands, starts processes and moves files, in a local network
namespace (with its own mount namespace and libvirtd) or, later, over SSH.
Nothing above this layer knows which kind of host it has. The ledger, which
records every resource a lab makes so `testbed down` can remove exactly
that, lives here too. Must not know about links, guests or SPICE.
"""
