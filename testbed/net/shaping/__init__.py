"""Shaping engines: the kernel engine (htb + netem through pyroute2) and the
userspace engine (htb for rate, an NFQUEUE delay line for delay, jitter and
loss, where the kernel has no netem). Both implement `ShapingEngine`.
"""
