# Shared by the benchmarks that boot the appliance image under qemu
# (instant.sh, liverestore.sh). Source it after setting BENCH (the
# script's name, for messages), WORK (its temporary directory), ACCEL and
# LIMIT; it sets PY (a python3 with libnbd's binding), PIDS (what to stop
# on exit) and the functions below, and traps EXIT to stop and remove
# what the script started.

# libnbd's Python binding is installed for Debian's python3, which need not
# be the python3 first on PATH.
PY=
for p in /usr/bin/python3 python3; do
	if "$p" -c 'import nbd' 2>/dev/null; then PY=$p; break; fi
done
[[ -n $PY ]] || { echo "missing libnbd's Python binding: apt-get install -y python3-libnbd" >&2; exit 1; }

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	scripts/s3-server.sh stop "$WORK/s3" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "$BENCH bench failed: $*" >&2; exit 1; }

# stop PID kills one process this script started and forgets it.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# boot NAME DRIVE_SPEC starts qemu on the drive and waits, at most LIMIT
# seconds, until /healthz answers; it leaves qemu running as $QEMU, its
# forwarded API port as $GUEST_PORT and its monitor socket as
# $WORK/monitor-NAME.
boot() {
	local name=$1 drive=$2 start
	GUEST_PORT=$(free_port)
	qemu-system-x86_64 -accel "$ACCEL" -m 1024 -smp 2 -nographic -no-reboot \
		-drive "$drive,if=virtio" -device virtio-net-pci,netdev=n0 \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$GUEST_PORT-:8443" \
		-serial "file:$WORK/console-$name.log" -monitor "unix:$WORK/monitor-$name,server,nowait" \
		-display none 2>"$WORK/qemu-$name.log" &
	QEMU=$!
	PIDS+=("$QEMU")
	echo "boot $name ($ACCEL): waiting up to ${LIMIT}s for https://127.0.0.1:$GUEST_PORT/healthz" >&2
	start=$SECONDS
	until curl -fsk --max-time 2 "https://127.0.0.1:$GUEST_PORT/healthz" >/dev/null 2>&1; do
		kill -0 "$QEMU" 2>/dev/null || fail "boot $name: qemu exited: $(cat "$WORK/qemu-$name.log"); console: $(tail -20 "$WORK/console-$name.log")"
		((SECONDS - start < LIMIT)) || fail "boot $name: no /healthz after ${LIMIT}s; console: $(tail -20 "$WORK/console-$name.log")"
		sleep 0.5
	done
}

# monitor NAME COMMAND sends one command to the qemu monitor of NAME.
monitor() {
	"$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\n"); s.recv(4096)' "$WORK/monitor-$1" "$2" 2>/dev/null
}

# powerdown NAME shuts the guest booted as NAME down: the ACPI power
# button first; a guest that ignores it (the image has no acpid) is
# powered off after GRACE seconds (35), past the kernel's 30 s writeback of
# dirty pages and ext4's 5 s commits, so what it wrote has reached its
# disk as it would on a real machine losing power then.
powerdown() {
	local name=$1 start
	monitor "$name" system_powerdown || fail "powerdown $name: no monitor"
	start=$SECONDS
	while kill -0 "$QEMU" 2>/dev/null && ((SECONDS - start < ${GRACE:-35})); do
		sleep 0.5
	done
	kill -0 "$QEMU" 2>/dev/null && { monitor "$name" quit || true; }
	stop "$QEMU"
}

# backup_image BUCKET [DATA_MIB] builds astrolabe (unless ASTROLABE names a
# build), starts versitygw, copies the image $RAW into a new configuration
# as disk:appliance.img (with DATA_MIB MiB of random data appended past its
# partitions, which the guest never reads, as a server's disk holds) and
# backs it up into a repository in BUCKET. It sets BIN, A (the command with
# the configuration), REPO, SNAP and t_backup (seconds).
backup_image() {
	local bucket=$1 data=${2:-0} t0
	BIN=${ASTROLABE:-$WORK/astrolabe}
	[[ -n ${ASTROLABE:-} ]] || go build -o "$BIN" ./cmd/astrolabe
	eval "$(scripts/s3-server.sh start "$WORK/s3")"
	export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY ASTROLABE_PASSWORD=bench
	A="timeout $((LIMIT * 4)) $BIN --config $WORK/cfg --log-level error"
	REPO=s3+http://$S3_ENDPOINT/bench/$bucket
	"$BIN" init "$WORK/cfg" >/dev/null 2>&1
	cp --sparse=always "$RAW" "$WORK/cfg/disk/appliance.img"
	((data == 0)) || head -c "${data}M" /dev/urandom >>"$WORK/cfg/disk/appliance.img"
	$A repo init --repo "$REPO" >/dev/null 2>&1
	t0=$(now)
	SNAP=$($A backup --repo "$REPO" disk:appliance.img 2>/dev/null | tail -n1)
	t_backup=$(echo "$(now) - $t0" | bc)
	[[ $SNAP == disk:appliance.img:* ]] || fail "backup printed no snapshot ID: '$SNAP'"
	echo "backed up $RAW ($(du -h "$RAW" | cut -f1) allocated) + $data MiB as $SNAP in $(printf %.1f "$t_backup")s" >&2
}
