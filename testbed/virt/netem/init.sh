#!/bin/sh
# PID 1 of the netem VM (packed as /init): no systemd, just what a shaping host needs.
# Mounts the kernel filesystems, loads the qdisc, classifier, action and netfilter
# modules listed in /etc/testbed/modules, configures its NICs from /etc/testbed/nics
# (written per VM by testbed.virt.netem_boot, in a second cpio archive) and runs sshd.
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
# /etc/testbed/nics: "<mac> <name> [<address/prefix>]" per NIC, the first the SSH one;
# each NIC is found by its MAC and renamed to its network's name
while read -r mac name addr; do
    dev="" i=0
    while [ -z "$dev" ]; do
        for d in /sys/class/net/*; do
            [ "$(cat "$d/address")" = "$mac" ] && dev=${d##*/}
        done
        [ -n "$dev" ] && break
        i=$((i + 1)); [ $i -gt 50 ] && { say "ERROR no NIC with MAC $mac"; break; }; sleep 0.1
    done
    [ -z "$dev" ] && continue
    [ "$dev" = "$name" ] || ip link set "$dev" name "$name" || say "ERROR rename $dev $name"
    ip link set "$name" up || say "ERROR $name up"
    [ -z "$addr" ] || ip addr add "$addr" dev "$name" || say "ERROR address $addr on $name"
done < /etc/testbed/nics
[ -n "$TB_GATEWAY" ] && ip route add default via "$TB_GATEWAY"
chmod 600 /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -E /run/sshd.log || say "ERROR sshd did not start: $(tail -n 3 /run/sshd.log)"
say "READY $(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 5; done
