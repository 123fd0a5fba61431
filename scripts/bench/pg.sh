#!/usr/bin/env bash
# Benchmark: the pg PE against PostgreSQL's own tools, on a pgbench
# database of about 1 GiB (SCALE=68) in a server started here.
#  1. backup: `astrolabe backup --repo DIR pg:main` (base backup over the
#     replication protocol, then into a directory repository) vs
#     `pg_basebackup -Ft -X stream -c fast` into a local directory, paired
#     runs under farm-bench --vs (RUNS pairs); the ratio A/B is ours/theirs.
#     Then the base backup alone (`astrolabe snap`, then rmsn) vs the same.
#  2. stored bytes: the first and a second backup of the unchanged database
#     (new and stored bytes, as the backup reports them) vs the size of
#     pg_basebackup's output, which a second run writes again whole.
#  3. restore: `astrolabe restore --mode update --to pg:bench` (extract,
#     start the server, wait for it to accept connections) vs untarring
#     pg_basebackup's base.tar and pg_wal.tar, paired under farm-bench;
#     then vs untarring followed by sync -f (what is written is on disk).
# Needs root, postgresql-15 and postgresql-contrib (scripts/deps.d/
# postgres.sh), farm-bench and bc. Works under /var/tmp, listens on
# 127.0.0.1, removes everything on exit. Knobs: SCALE, RUNS, TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-68}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-1800}
BIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d /var/tmp/astrolabe-bench-pg.XXXXXX)
chmod 711 "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PGPASSWORD=bench ASTROLABE_PASSWORD=bench
asuser() { runuser -u postgres -- "$@"; }
cleanup() {
	for d in "$WORK"/cfg/pg/clusters/*/data "$WORK/pgdata"; do
		[[ -f $d/postmaster.pid ]] && asuser "$BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
	done
	rm -rf "$WORK"
}
# Ours restores with the server started and accepting connections; untar
# leaves a data directory to start. The restore ratio favours untar by that.
trap cleanup EXIT

go build -o "$WORK/astrolabe" ./cmd/astrolabe
A="$WORK/astrolabe --config $WORK/cfg"

# The server: replication allowed for the role astrolabe.
install -d -o postgres -m 700 "$WORK/pgdata" "$WORK/pgsock"
echo bench >"$WORK/pw" && chown postgres "$WORK/pw"
asuser "$BIN/initdb" -D "$WORK/pgdata" -U postgres --pwfile "$WORK/pw" --auth-host=scram-sha-256 --auth-local=trust >/dev/null
cat >>"$WORK/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK/pgsock'
wal_level = replica
max_wal_senders = 10
shared_buffers = 256MB
CONF
echo "host replication all 127.0.0.1/32 scram-sha-256" >>"$WORK/pgdata/pg_hba.conf"
asuser "$BIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/pgdata/server.log" -w start >/dev/null
PSQL="$BIN/psql -X -q -h 127.0.0.1 -p $PORT -U postgres"
$PSQL -c "CREATE ROLE astrolabe LOGIN REPLICATION PASSWORD 'bench'; GRANT pg_read_all_settings, pg_read_all_stats TO astrolabe"
echo "pgbench -i -s $SCALE" >&2
"$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
$PSQL -c CHECKPOINT
echo "database: $($PSQL -A -t -c "SELECT pg_size_pretty(pg_database_size('postgres'))")" >&2

$WORK/astrolabe init "$WORK/cfg" >/dev/null
chmod 711 "$WORK/cfg"
cat >"$WORK/cfg/pes/pg.pe.json" <<JSON
{"root": "pg",
 "clusters": [{"name": "main", "host": "127.0.0.1", "port": $PORT, "user": "astrolabe", "password": "bench", "sslmode": "disable"}],
 "restore": {"binDir": "$BIN", "portMin": 15300, "portMax": 15399}}
JSON
$A repo init --repo "$WORK/repo" >/dev/null 2>&1

# 2. stored bytes of a first and a second backup (before the timed runs,
# which add more of the same).
first=$($A backup --repo "$WORK/repo" pg:main 2>&1 >/dev/null | grep '^backed up')
second=$($A backup --repo "$WORK/repo" pg:main 2>&1 >"$WORK/id" | grep '^backed up')
SNAP=$(tail -n1 "$WORK/id")
BB="-h 127.0.0.1 -p $PORT -U astrolabe -Ft -X stream -c fast"
"$BIN/pg_basebackup" $BB -D "$WORK/bb"
bbbytes=$(du -sb "$WORK/bb" | cut -f1)

# 1. backup time, paired.
echo "timing backups ($RUNS pairs)" >&2
farm-bench -n "$RUNS" --timeout "$TIMEOUT" \
	--vs "sh -c 'rm -rf $WORK/bbt && exec $BIN/pg_basebackup $BB -D $WORK/bbt'" \
	-- $A backup --repo "$WORK/repo" pg:main

# The base backup alone (a local snapshot, deleted again), paired: where
# the time of 1. goes.
echo "timing snapshots alone ($RUNS pairs)" >&2
farm-bench -n "$RUNS" --timeout "$TIMEOUT" \
	--vs "sh -c 'rm -rf $WORK/bbt && exec $BIN/pg_basebackup $BB -D $WORK/bbt'" \
	-- sh -c "id=\$($A snap pg:main | tail -n1) && exec $A rmsn \$id"

# 3. restore time, paired: ours updates the stopped cluster pg:bench.
$A restore --repo "$WORK/repo" --to pg:bench "$SNAP" >/dev/null 2>&1
DATA=$WORK/cfg/pg/clusters/bench/data
echo "timing restores ($RUNS pairs)" >&2
farm-bench -n "$RUNS" --timeout "$TIMEOUT" \
	--vs "sh -c 'rm -rf $WORK/untar && mkdir -p $WORK/untar/pg_wal && tar -xf $WORK/bb/base.tar -C $WORK/untar && exec tar -xf $WORK/bb/pg_wal.tar -C $WORK/untar/pg_wal'" \
	-- sh -c "runuser -u postgres -- $BIN/pg_ctl -D $DATA -m immediate stop >/dev/null 2>&1; exec $A restore --repo $WORK/repo --mode update --to pg:bench $SNAP"
# The same against untar followed by sync -f: a restore is durable once it
# says it is done (ours syncs, and so does PostgreSQL as it starts), tar
# leaves the writeback for later.
echo "timing restores against untar + sync ($RUNS pairs)" >&2
farm-bench -n "$RUNS" --timeout "$TIMEOUT" \
	--vs "sh -c 'rm -rf $WORK/untar && mkdir -p $WORK/untar/pg_wal && tar -xf $WORK/bb/base.tar -C $WORK/untar && tar -xf $WORK/bb/pg_wal.tar -C $WORK/untar/pg_wal && exec sync -f $WORK/untar'" \
	-- sh -c "runuser -u postgres -- $BIN/pg_ctl -D $DATA -m immediate stop >/dev/null 2>&1; exec $A restore --repo $WORK/repo --mode update --to pg:bench $SNAP"

echo
echo "first backup:  $first"
echo "second backup: $second"
echo "pg_basebackup output: $bbbytes bytes (each run writes it whole)"
