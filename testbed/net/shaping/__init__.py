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
- scratch.py: throw-away namespaces for the tests and the bench (not the lab).

Owns qdiscs, filters, NFQUEUE rules and delay line processes in lab namespaces,
never anything in the root namespace. Must not know about guests or SPICE.
"""
