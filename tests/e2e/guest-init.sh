#!/bin/busybox sh
# /init of the end-to-end guest: mount the virtiofs share, run the workload,
# print the result lines and power off. Parameters come from the kernel
# command line: e2e.tag=TAG e2e.cache=MODE e2e.queues=N.
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

finish() {
  sync
  echo "E2E POWEROFF"
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}

tag=myfs
cache=auto
queues=1
for arg in $(cat /proc/cmdline); do
  case $arg in
    e2e.tag=*) tag=${arg#e2e.tag=} ;;
    e2e.cache=*) cache=${arg#e2e.cache=} ;;
    e2e.queues=*) queues=${arg#e2e.queues=} ;;
  esac
done

echo "E2E BOOTED $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(nproc)"
for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "E2E FAIL insmod $m"
done
if ! mount -t virtiofs "$tag" /mnt; then
  echo "E2E FAIL mount mount -t virtiofs $tag failed"
  echo "E2E DONE pass=0 fail=1"
  finish
fi
echo "E2E ok mount"
E2E_CACHE_MODE=$cache E2E_QUEUES=$queues sh /workload.sh /mnt
cd /
if umount /mnt; then echo "E2E ok umount"; else echo "E2E FAIL umount umount /mnt failed"; fi
finish
