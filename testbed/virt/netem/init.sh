#!/bin/sh
# PID 1 of the netem VM (packed as /init): no systemd, just what a shaping host needs.
# Mounts the kernel filesystems, loads the qdisc, classifier, action and netfilter
# modules listed in /etc/testbed/modules, configures eth0 from /etc/testbed/net.conf
# (written per VM by testbed.virt.netem_vm, in a second cpio archive) and runs sshd.
# Every step's failure is said on the serial console; PID 1 never exits (a panic
# would hide why), it stays to reap orphans.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "TESTBED-NETEM-VM $*" > /dev/ttyS0; }
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd /run/netns
for m in $(cat /etc/testbed/modules); do
    modprobe "$m" || say "ERROR modprobe $m failed"
done
. /etc/testbed/net.conf
hostname "$TB_HOSTNAME"
ip link set lo up
i=0
while ! ip link set eth0 up 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 50 ] && { say "ERROR no eth0"; break; }; sleep 0.1
done
ip addr add "$TB_ADDRESS" dev eth0 || say "ERROR address $TB_ADDRESS"
[ -n "$TB_GATEWAY" ] && ip route add default via "$TB_GATEWAY"
chmod 600 /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -E /run/sshd.log || say "ERROR sshd did not start: $(tail -n 3 /run/sshd.log)"
say "READY $(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 5; done
