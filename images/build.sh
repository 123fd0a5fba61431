#!/usr/bin/env bash
# Builds the appliance: a Debian bookworm root filesystem with the astrolabe
# binary and its units, a bootable disk (MBR, ext4, extlinux), a streamOptimized
# VMDK and the OVA. Needs root (a loop mount), debootstrap, extlinux,
# syslinux-common, qemu-utils, e2fsprogs, fdisk.
#
#   images/build.sh            build into $OUT (default /var/tmp/astrolabe-image)
#
# The debootstrap result is cached in $OUT/cache, keyed by what makes it
# (suite, packages, mirror, the step's code), so a second build with nothing
# changed downloads nothing and produces the same file list ($OUT/rootfs.list).
# Outputs: $OUT/astrolabe-appliance-$VERSION.ova, $OUT/disk.raw (boot test).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/var/tmp/astrolabe-image}
CACHE=$OUT/cache
MIRROR=${MIRROR:-http://deb.debian.org/debian}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
DISK_MIB=${DISK_MIB:-2048}
# A fixed filesystem UUID: the boot configuration names the root by it.
ROOT_UUID=6a1c2f4e-0b6d-4d8e-9a51-a57201abe001
PACKAGES=linux-image-amd64,initramfs-tools,systemd-sysv,udev,kmod,iproute2,ca-certificates,open-vm-tools,fuse3,e2fsprogs,xfsprogs,dosfstools,ntfs-3g,util-linux,mount

for t in debootstrap extlinux qemu-img mke2fs sfdisk; do
	command -v $t >/dev/null || { echo "missing $t: apt-get install -y debootstrap extlinux syslinux-common qemu-utils e2fsprogs fdisk" >&2; exit 1; }
done
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
[[ -f $SYSLINUX_MBR ]] || { echo "missing $SYSLINUX_MBR: apt-get install -y syslinux-common" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "images/build.sh needs root (debootstrap, loop devices)" >&2; exit 1; }
mkdir -p "$OUT" "$CACHE"
ROOT=$OUT/root MNT=$OUT/mnt
# unmount_below DIR unmounts whatever is mounted at or below DIR (an
# interrupted debootstrap can leave /proc and /sys mounted in its target),
# so that rm -rf never reaches into them.
unmount_below() {
	local m
	findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' | sort -r | while read -r m; do
		umount "$m" || umount -l "$m"
	done
}
cleanup() {
	unmount_below "$MNT"
	unmount_below "$CACHE/debootstrap"
	unmount_below "$ROOT"
}
trap cleanup EXIT
step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS" >&2; }

step "astrolabe $VERSION"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$OUT/astrolabe" ./cmd/astrolabe
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/astrolabe-firstboot" ./images/firstboot

# The key covers what the cached tree is made of: the suite, packages and
# mirror, the dpkg excludes and this step's own text (between the markers).
KEY=$({
	echo "bookworm $PACKAGES $MIRROR"
	cat images/rootfs/etc/dpkg/dpkg.cfg.d/01-astrolabe-slim
	sed -n '/^# >>> base$/,/^# <<< base$/p' images/build.sh
} | sha256sum | cut -c1-16)
BASE=$CACHE/rootfs-$KEY.tar
# >>> base
if [[ ! -f $BASE ]]; then
	step "debootstrap (cached as $BASE)"
	unmount_below "$CACHE/debootstrap"
	rm -rf "$CACHE/debootstrap"
	mkdir -p "$CACHE/debs"
	debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" bookworm "$CACHE/debootstrap" "$MIRROR" >&2
	# Slim: no documentation, translations or package lists; the dpkg
	# excludes keep it so on upgrades.
	install -D -m 644 images/rootfs/etc/dpkg/dpkg.cfg.d/01-astrolabe-slim "$CACHE/debootstrap/etc/dpkg/dpkg.cfg.d/01-astrolabe-slim"
	find "$CACHE/debootstrap/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
	rm -rf "$CACHE/debootstrap"/usr/share/{man,info,lintian} "$CACHE/debootstrap"/var/lib/apt/lists/* "$CACHE/debootstrap"/var/cache/apt/*.bin
	find "$CACHE/debootstrap/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
	chroot "$CACHE/debootstrap" apt-get clean
	tar -C "$CACHE/debootstrap" --numeric-owner --xattrs -cf "$BASE.tmp" .
	mv "$BASE.tmp" "$BASE"
	rm -rf "$CACHE/debootstrap"
	find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' -not -name "${BASE##*/}" -delete # stale keys
else
	step "debootstrap: cached $BASE"
fi
# <<< base

step "root filesystem"
unmount_below "$ROOT"
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner --xattrs -xf "$BASE"
cp -a images/rootfs/. "$ROOT/"
install -m 755 "$OUT/astrolabe" "$ROOT/usr/local/bin/astrolabe"
install -m 755 "$OUT/astrolabe-firstboot" "$ROOT/usr/local/sbin/astrolabe-firstboot"
mkdir -p "$ROOT/mnt/astrolabe" # for FUSE mounts through the API
echo astrolabe >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 astrolabe\n' >"$ROOT/etc/hosts"
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$ROOT_UUID" >"$ROOT/etc/fstab"
cat >"$ROOT/etc/issue" <<'EOT'
Astrolabe data-protection appliance (\n, \l)

  REST API:  https://\4:8443/v1/astrolabe   (health: /healthz)
  S3:        https://\4:9000    NBD: nbd://\4:10809
  The API token is the one given at deploy, else generated into
  /etc/astrolabe/api-token; S3 keys in /etc/astrolabe/s3-credentials.json.

EOT
# No password logins: root is locked; the console shows the above.
chroot "$ROOT" passwd -l root >/dev/null
chroot "$ROOT" systemctl enable astrolabe.service astrolabe-firstboot.service systemd-networkd.service >/dev/null 2>&1
chroot "$ROOT" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
KERNEL=$(cd "$ROOT/boot" && ls vmlinuz-* | sort -V | tail -n1)
INITRD=initrd.img-${KERNEL#vmlinuz-}
# A VM appliance has no wireless, sound, cameras, InfiniBand or desktop
# GPUs: their modules are most of the kernel package's 400 MB. (The initrd,
# built with all of them present, keeps what booting needs.)
KMOD=$ROOT/usr/lib/modules/${KERNEL#vmlinuz-}/kernel
rm -rf "$KMOD"/sound "$KMOD"/net/wireless "$KMOD"/net/mac80211 "$KMOD"/net/bluetooth \
	"$KMOD"/drivers/{net/wireless,media,infiniband,bluetooth,staging,isdn,iio,sound,comedi,hwmon,power,thunderbolt} \
	"$KMOD"/drivers/gpu/drm/{amd,nouveau,i915,radeon,xe,gma500,mgag200,ast} \
	"$KMOD"/drivers/net/ethernet/{mellanox,broadcom,chelsio,qlogic,marvell,cavium,huawei,sfc,netronome,pensando,emulex}
chroot "$ROOT" depmod "${KERNEL#vmlinuz-}"
(cd "$ROOT" && find . -xdev | LC_ALL=C sort) >"$OUT/rootfs.list"

step "disk image"
ROOTFS=$OUT/rootfs.ext4
rm -f "$ROOTFS"
# extlinux reads ext4 without the newer features (64bit, metadata checksums,
# orphan file); a 2 GiB root needs none of them.
mke2fs -q -t ext4 -O ^64bit,^metadata_csum,^metadata_csum_seed,^orphan_file -L astrolabe-root -U "$ROOT_UUID" -E root_owner=0:0 -d "$ROOT" "$ROOTFS" "$((DISK_MIB - 1))M"

step "boot loader"
# extlinux is installed into the filesystem image before it goes into the
# disk: its sector lists are relative to the filesystem, and the MBR code
# chain-loads the active partition. No partition devices are needed.
mkdir -p "$MNT"
mount -o loop "$ROOTFS" "$MNT"
mkdir -p "$MNT/boot/extlinux"
extlinux --install "$MNT/boot/extlinux" >&2
cat >"$MNT/boot/extlinux/extlinux.conf" <<EOT
DEFAULT astrolabe
TIMEOUT 10
SERIAL 0 115200
LABEL astrolabe
	MENU LABEL Astrolabe appliance $VERSION
	LINUX /boot/$KERNEL
	INITRD /boot/$INITRD
	APPEND root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200
EOT
umount "$MNT"
RAW=$OUT/disk.raw
rm -f "$RAW"
truncate -s "${DISK_MIB}M" "$RAW"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk -q --no-reread --no-tell-kernel "$RAW"
dd if="$ROOTFS" of="$RAW" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$SYSLINUX_MBR" of="$RAW" bs=440 count=1 conv=notrunc status=none
rm -f "$ROOTFS"

step "VMDK and OVA"
VMDK=$OUT/astrolabe-appliance-disk1.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$RAW" "$VMDK"
OVA=$OUT/astrolabe-appliance-$VERSION.ova
# Earlier versions' OVAs would pile up here.
find "$OUT" -maxdepth 1 -name 'astrolabe-appliance-*.ova' -not -name "${OVA##*/}" -delete
go run ./images/ovagen -vmdk "$VMDK" -disk-capacity "$((DISK_MIB << 20))" -version "$VERSION" -out "$OVA"
step "done"
ls -l "$OVA" "$RAW" >&2
echo "$OVA"
