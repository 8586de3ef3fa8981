"""Net: links between hosts, shaping engines, probes.

Nodes execute commands (hosts), interfaces configure themselves, links
connect nodes. Shaping engines (kernel netem, userspace delay line) are peers
behind one interface. All kernel objects are explicit pyroute2 netlink calls;
no shelling out to `tc` or `ip`; on an SSH host they run there, in the shaping agent
(`agent.py`). Must not know about guests or SPICE.
"""
