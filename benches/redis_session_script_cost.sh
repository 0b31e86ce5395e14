#!/bin/bash
# Usage: benches/redis_session_script_cost.sh (N=calls per measurement, default 100000).
# Needs redis-server, redis-cli and redis-benchmark; starts its own server on a free
# loopback port (never 6379) and stops it at the end. Prints one line per
# measurement: name and server microseconds per call; compare within one run.
# Server time per call (INFO commandstats, usec_per_call of evalsha) of the
# pieces session side data (one more PEXPIRE in every session write) and append
# receipts (the trim count) add to the session scripts, each beside the same
# script without them.
set -e
DIR=$(mktemp -d)
trap 'redis-cli -p $PORT shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
redis-server --port $PORT --save '' --appendonly no --daemonize yes --pidfile $DIR/redis.pid --logfile $DIR/redis.log
sleep 0.5
R="redis-cli -p $PORT"
N=${N:-100000}
# A session: ctx hash, msgs list of 20 messages of ~120 bytes, no data hash.
$R del '{s}:ctx' '{s}:msgs' '{s}:data' >/dev/null
$R hset '{s}:ctx' id x version 1 message_count 20 >/dev/null
for i in $(seq 1 20); do $R rpush '{s}:msgs' "$i:{\"role\":\"user\",\"content\":\"mensagem número $i, com acentos e um emoji 🙂 para contar caracteres\",\"at\":1}" >/dev/null; done
$R pexpire '{s}:ctx' 100000000 >/dev/null; $R pexpire '{s}:msgs' 100000000 >/dev/null

OLD_TAIL="redis.call('PEXPIRE',KEYS[1],ARGV[1]) redis.call('PEXPIRE',KEYS[2],ARGV[1]) return 1"
NEW_TAIL="redis.call('PEXPIRE',KEYS[1],ARGV[1]) redis.call('PEXPIRE',KEYS[2],ARGV[1]) redis.call('PEXPIRE',KEYS[3],ARGV[1]) return 1"
# The trim count of an append that pushes one message out of a full window:
# LLEN, LRANGE of the one trimmed message, cjson.decode, count characters.
TRIM="local old = redis.call('LLEN', KEYS[2]) local excess = old + 1 - 20 local t = 0
if excess > 0 then for _, raw in ipairs(redis.call('LRANGE', KEYS[2], 0, excess - 1)) do
local m = cjson.decode(string.match(raw, '^%d+:(.*)\$')) local _, c = string.gsub(m.content, '[^\128-\191]', '') t = t + math.ceil(c / 4) end end return t"
NOTRIM="return 0"

run() { # name script
  local sha=$($R script load "$2")
  $R config resetstat >/dev/null
  redis-benchmark -p $PORT -n $N -c 4 -q evalsha $sha 3 '{s}:ctx' '{s}:msgs' '{s}:data' 100000000 >/dev/null
  local us=$($R info commandstats | grep '^cmdstat_evalsha:' | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')
  echo "$1 $us"
}
for round in 1 2 3 4 5; do
  run refresh_old "$OLD_TAIL"; run refresh_new "$NEW_TAIL"
  run append_no_count "$NOTRIM"; run append_trim_count "$TRIM"
done
