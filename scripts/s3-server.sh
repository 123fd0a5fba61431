#!/usr/bin/env bash
# A real S3 server for tests and benchmarks: versitygw (posix backend) on
# 127.0.0.1, built once into $(go env GOPATH)/bin.
#
#   scripts/s3-server.sh install           build versitygw if missing (~75 s)
#   scripts/s3-server.sh start DIR [PORT]  start it on DIR; prints the env to use
#   scripts/s3-server.sh stop DIR          stop the server started on DIR
set -euo pipefail
VERSION=v1.8.0
BIN=$(go env GOPATH)/bin/versitygw
ACCESS=${S3_TEST_ACCESS_KEY:-astrolabe-test}
SECRET=${S3_TEST_SECRET_KEY:-astrolabe-test-secret}

install() {
	if [[ ! -x $BIN ]]; then
		echo "building versitygw $VERSION (about 75 s)" >&2
		GOFLAGS= go install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
	fi
}

case ${1:-} in
install) install ;;
start)
	dir=${2:?usage: $0 start DIR [PORT]}
	port=${3:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
	install
	mkdir -p "$dir/data"
	ROOT_ACCESS_KEY=$ACCESS ROOT_SECRET_KEY=$SECRET nohup "$BIN" --port "127.0.0.1:$port" posix "$dir/data" >"$dir/versitygw.log" 2>&1 &
	echo $! >"$dir/versitygw.pid"
	for _ in $(seq 100); do
		(echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	echo "export AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET S3_ENDPOINT=127.0.0.1:$port S3_PID=$(cat "$dir/versitygw.pid")"
	;;
stop)
	dir=${2:?usage: $0 stop DIR}
	if [[ -f $dir/versitygw.pid ]]; then
		kill "$(cat "$dir/versitygw.pid")" 2>/dev/null || true
		rm -f "$dir/versitygw.pid"
	fi
	;;
*)
	echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2
	exit 2
	;;
esac
