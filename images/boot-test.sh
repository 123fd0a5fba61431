#!/usr/bin/env bash
# Boots the built disk image with qemu, hands it an OVF environment through fw_cfg as
# vSphere would through guestinfo, and checks over a port forwarded to
# 127.0.0.1 that `astrolabe serve` answers /healthz and takes the token
# from the environment. The console log is kept in $OUT/console.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/var/tmp/astrolabe-image}
RAW=$OUT/disk.raw
[[ -f $RAW ]] || { echo "no $RAW: run 'make image' first" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "missing qemu-system-x86_64: apt-get install -y qemu-system-x86" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=boot-test-$RANDOM$RANDOM
ENVXML=$OUT/ovfenv.xml
cat >"$ENVXML" <<EOT
<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection>
    <Property oe:key="hostname" oe:value="astrolabe-boot-test"/>
    <Property oe:key="api_token" oe:value="$TOKEN"/>
  </PropertySection>
</Environment>
EOT
# boot starts qemu with the given accelerator.
boot() {
	: >"$OUT/console.log"
	qemu-system-x86_64 "$@" -m 1024 -smp 2 -nographic -no-reboot \
		-drive "file=$RAW,format=raw,if=virtio,snapshot=on" \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:8443" -device virtio-net-pci,netdev=n0 \
		-fw_cfg "name=opt/astrolabe/ovfenv,file=$ENVXML" \
		-serial "file:$OUT/console.log" -monitor none -display none 2>"$OUT/qemu.log" &
	QEMU=$!
}
trap 'kill $QEMU 2>/dev/null || true; wait $QEMU 2>/dev/null || true' EXIT
# Software emulation by default: it boots in about a minute here, while
# nested KVM on these machines hangs in the boot loader. ACCEL=kvm tries it.
ACCEL=${ACCEL:-tcg}
LIMIT=${LIMIT:-300}
boot -accel "$ACCEL"
echo "booting ($ACCEL), waiting up to ${LIMIT}s for https://127.0.0.1:$PORT/healthz" >&2
for ((i = 0; i < LIMIT; i += 2)); do
	if ! kill -0 $QEMU 2>/dev/null; then
		echo "qemu exited; console:" >&2
		tail -30 "$OUT/console.log" >&2
		exit 1
	fi
	if curl -fsk --max-time 2 "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
		break
	fi
	sleep 2
done
curl -fsk --max-time 5 "https://127.0.0.1:$PORT/healthz" || { echo "no /healthz after ${LIMIT}s; console:" >&2; tail -40 "$OUT/console.log" >&2; exit 1; }
echo
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/v1/astrolabe")
[[ $code == 200 ]] || { echo "the API refused the token from the OVF environment: $code" >&2; exit 1; }
code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PORT/v1/astrolabe")
[[ $code == 401 ]] || { echo "the API answered $code without a token" >&2; exit 1; }
# The login banner (with the host name) comes up about when the API does.
for _ in $(seq 60); do grep -aq "appliance (astrolabe-boot-test" "$OUT/console.log" && break; sleep 1; done
grep -aq "appliance (astrolabe-boot-test" "$OUT/console.log" || { echo "the console banner lacks the hostname from the OVF environment" >&2; exit 1; }
echo "boot test passed in ${SECONDS}s: /healthz answers, the deploy token works, hostname set"
