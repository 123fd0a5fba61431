#!/usr/bin/env bash
# Boots the built disk image with qemu twice and checks over a port forwarded
# to 127.0.0.1 that `astrolabe serve` answers /healthz and took its settings
# from the OVF environment, handed over as vSphere's guestinfo would be:
#
#  1. virtio devices; through fw_cfg: host name and API token; the
#     network by DHCP;
#  2. vSphere's devices (paravirtual SCSI, vmxnet3); on a config drive (a
#     FAT disk labelled OVF-ENV with ovf-env.xml): a static address, host name, token, and a repository whose password
#     needs quoting; the API must list the repository's snapshots and
#     make a FUSE mount (the unit's sandbox allows it).
#
# Each boot runs on a throwaway overlay (snapshot=on), so both are first
# boots. Console logs: $OUT/console-1.log, $OUT/console-2.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/var/tmp/astrolabe-image}
RAW=$OUT/disk.raw
[[ -f $RAW ]] || { echo "no $RAW: run 'make image' first" >&2; exit 1; }
for pair in qemu-system-x86_64:qemu-system-x86 curl:curl mkfs.vfat:dosfstools mcopy:mtools python3:python3; do
	command -v "${pair%%:*}" >/dev/null || { echo "missing ${pair%%:*}: apt-get install -y ${pair#*:}" >&2; exit 1; }
done
# Software emulation by default: it boots in well under a minute here,
# while nested KVM on these machines hung in the boot loader. ACCEL=kvm tries it.
ACCEL=${ACCEL:-tcg}
LIMIT=${LIMIT:-300}
WORK=$(mktemp -d "$OUT/boot-test.XXXXXX")
QEMU=
cleanup() {
	if [[ -n $QEMU ]]; then
		kill "$QEMU" 2>/dev/null || true
		wait "$QEMU" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# environment KEY=VALUE... writes an OVF environment document to stdout.
environment() {
	echo '<?xml version="1.0" encoding="UTF-8"?>'
	echo '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">'
	echo '  <PropertySection>'
	local kv v
	for kv in "$@"; do
		v=${kv#*=} v=${v//'&'/'&amp;'} v=${v//'<'/'&lt;'} v=${v//'>'/'&gt;'} v=${v//'"'/'&quot;'}
		printf '    <Property oe:key="%s" oe:value="%s"/>\n' "${kv%%=*}" "$v"
	done
	echo '  </PropertySection>'
	echo '</Environment>'
}

# boot N HARDWARE GUEST_ADDR QEMU_ARGS... starts qemu with virtio or
# vmware (paravirtual SCSI and vmxnet3, as the OVF asks of vSphere)
# devices; the API is then on $PORT.
boot() {
	local n=$1 hw=$2 guest=$3 devices
	shift 3
	PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	CONSOLE=$OUT/console-$n.log
	: >"$CONSOLE"
	case $hw in
	virtio) devices=(-drive "file=$RAW,format=raw,if=virtio,snapshot=on" -device virtio-net-pci,netdev=n0) ;;
	vmware) devices=(-device pvscsi,id=scsi0 -drive "file=$RAW,format=raw,if=none,id=root,snapshot=on"
		-device scsi-hd,drive=root,bus=scsi0.0,bootindex=0 -device vmxnet3,netdev=n0) ;;
	esac
	qemu-system-x86_64 -accel "$ACCEL" -m 1024 -smp 2 -nographic -no-reboot "${devices[@]}" \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-$guest:8443" \
		-serial "file:$CONSOLE" -monitor none -display none "$@" 2>"$WORK/qemu-$n.log" &
	QEMU=$!
	echo "boot $n ($ACCEL): waiting up to ${LIMIT}s for https://127.0.0.1:$PORT/healthz" >&2
	local start=$SECONDS
	until curl -fsk --max-time 2 "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
		if ! kill -0 "$QEMU" 2>/dev/null; then
			fail "qemu exited: $(cat "$WORK/qemu-$n.log")"
		fi
		((SECONDS - start < LIMIT)) || fail "no /healthz after ${LIMIT}s"
		sleep 2
	done
	echo "boot $n: /healthz answers after $((SECONDS - start))s: $(curl -fsk "https://127.0.0.1:$PORT/healthz")" >&2
}

fail() {
	echo "boot test failed: $*; console ($CONSOLE):" >&2
	tail -40 "$CONSOLE" >&2
	exit 1
}

stop() {
	kill "$QEMU" 2>/dev/null || true
	wait "$QEMU" 2>/dev/null || true
	QEMU=
}

# api METHOD PATH [BODY] prints the HTTP status; the body goes to $WORK/body.
api() {
	curl -sk -o "$WORK/body" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $TOKEN" \
		${3:+-H 'Content-Type: application/json' --data "$3"} "https://127.0.0.1:$PORT$2"
}

# banner TEXT waits for the login banner (it comes up about when the API does).
banner() {
	for _ in $(seq 60); do
		grep -aqF "$1" "$CONSOLE" && return
		sleep 1
	done
	fail "the console banner lacks '$1'"
}

# 1. fw_cfg, DHCP.
TOKEN=fwcfg-$RANDOM$RANDOM
environment hostname=astrolabe-fwcfg "api_token=$TOKEN" >"$WORK/env1.xml"
boot 1 virtio "" -fw_cfg "name=opt/astrolabe/ovfenv,file=$WORK/env1.xml"
[[ $(api GET /v1/astrolabe) == 200 ]] || fail "the API refused the token from the OVF environment"
[[ $(TOKEN=wrong api GET /v1/astrolabe) == 401 ]] || fail "the API accepted a wrong token"
banner "appliance (astrolabe-fwcfg"
banner "https://10.0.2.15:8443"
stop

# 2. Config drive, static address, repository.
TOKEN=drive-$RANDOM$RANDOM
PASSWORD='pa ss$w"o>rd`x`'"'"
environment hostname=astrolabe-drive "api_token=$TOKEN" ip=10.0.2.20 netmask=255.255.255.0 gateway=10.0.2.2 dns=10.0.2.3 \
	repo_url=/var/lib/astrolabe/repo "repo_password=$PASSWORD" >"$WORK/ovf-env.xml"
mkfs.vfat -n OVF-ENV -C "$WORK/drive.img" 1440 >/dev/null
mcopy -i "$WORK/drive.img" "$WORK/ovf-env.xml" ::ovf-env.xml
# The forward goes to the static address: it answers only if first boot set it.
boot 2 vmware 10.0.2.20 -drive "file=$WORK/drive.img,format=raw,if=none,id=cfg,readonly=on" -device scsi-hd,drive=cfg,bus=scsi0.0
[[ $(api GET /v1/astrolabe) == 200 ]] || fail "the API refused the token from the config drive"
banner "appliance (astrolabe-drive"
banner "https://10.0.2.20:8443"
code=$(api GET /v1/appliance/repository/snapshots)
[[ $code == 200 ]] || fail "repository snapshots: $code $(cat "$WORK/body")"
code=$(api POST /v1/appliance/mounts '{"path": "/mnt/astrolabe/pes"}')
[[ $code == 200 ]] || fail "FUSE mount: $code $(cat "$WORK/body")"
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/body")
code=$(api DELETE "/v1/appliance/mounts/$id")
[[ $code == 204 ]] || fail "unmount: $code $(cat "$WORK/body")"
stop
echo "boot test passed in ${SECONDS}s: virtio and pvscsi+vmxnet3, fw_cfg and config-drive environments (host name, token, DHCP and static address, repository), FUSE mount"
