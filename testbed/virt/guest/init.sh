#!/bin/sh
# PID 1 of the testbed guest (packed as /init): mount the kernel filesystems and
# run the heartbeat workload. If the workload ever exits, say so on the serial
# console and idle, because PID 1 exiting would panic the guest and hide why.
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
/bin/heartbeat
echo "TESTBED-GUEST-ERROR heartbeat exited with status $?" > /dev/ttyS0
while :; do sleep 3600; done
