"""Shaping engines: the kernel engine (htb + netem through pyroute2) and the
userspace engine (htb for rate, an NFQUEUE delay line for delay, jitter and
loss, where the kernel has no netem). Both implement `ShapingEngine`.

Where things are:
- base.py: Endpoint, Direction, the ShapingEngine contract, read-back comparison;
- detect.py: netem_available() (asks the kernel), select_engine();
- egress.py: the sender's qdisc stack both engines share (htb classifies per peer,
  tbf holds the rate); netlink.py: the tc messages, built and decoded;
- kernel.py: the kernel engine (netem under the tbf);
- userspace.py + iptables.py + delayline.py: the userspace engine, its NFQUEUE rules
  in the receiving namespace and its delay line process (fail-open);
- distributions.py: iproute2's netem delay tables, used by both engines;
- scratch.py: throw-away namespaces for the tests and the bench (not the lab);
- hosts.py: the engine for a lab whose endpoints are on `Host`s (SSH or local): each
  host's part is done on the host by its agent (`testbed.net.agent`), which runs one of
  the engines above there, in the host's own namespace (Endpoint.netns CURRENT, "").

Owns qdiscs, filters, NFQUEUE rules and delay line processes in lab namespaces, and in
an SSH host's own namespace through its agent (never its SSH interface); never anything
in this machine's root namespace. Must not know about guests or SPICE.
"""
