# QEMU devices of the bug 884631 no-freeze build (testbed.virt.qemu_build): configure
# --without-default-devices --with-devices-x86_64=testbed-884631, so only what
# testbed/virt/domain.py's guest uses is built (machine pc, qxl, virtio disk and
# serial, qemu-xhci with usb-redir and the tablet, the ISA serial port), plus what
# those select.
CONFIG_I440FX=y
CONFIG_QXL=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_SERIAL=y
CONFIG_USB=y
CONFIG_USB_XHCI=y
CONFIG_USB_XHCI_PCI=y
CONFIG_SERIAL_ISA=y
