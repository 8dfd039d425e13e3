#!/usr/bin/env bash
# A 3-member etcd cluster on loopback for the config store benchmark (benches/config_store.rs).
#
#   etcd.sh ensure                 install Debian's etcd-server if etcd is missing (root + apt only);
#                                  exit 3 with a message if it cannot be had
#   etcd.sh start DIR [PID]        start members 0..2 with data under DIR, wait until all are healthy;
#                                  with PID, a watchdog stops them once that process is gone
#   etcd.sh member DIR I           (re)start member I on its fixed ports with its existing data
#   etcd.sh kill DIR I             kill -9 member I
#   etcd.sh stop DIR               stop every member (TERM, then KILL after 5 s)
#
# Member I listens for clients on 127.0.0.1:$((23790 + I)) and for peers on 127.0.0.1:$((23800 + I));
# the fixed ports let a restarted member keep its address. Settings are etcd's defaults
# (heartbeat 100 ms, election timeout 1 s, an fdatasync per WAL write), as in the reference numbers,
# unless ETCD_HEARTBEAT_MS and ETCD_ELECTION_MS are set (e.g. 30 and 150, to compare failover with
# skynet's timing; etcd wants the election timeout at least 5 heartbeats).
set -euo pipefail

MEMBERS=3
CLIENT_BASE=23790
PEER_BASE=23800

client_url() { echo "http://127.0.0.1:$((CLIENT_BASE + $1))"; }
peer_url() { echo "http://127.0.0.1:$((PEER_BASE + $1))"; }

initial_cluster() {
  local i out=""
  for ((i = 0; i < MEMBERS; i++)); do
    out+="${out:+,}m$i=$(peer_url "$i")"
  done
  echo "$out"
}

ensure() {
  if command -v etcd >/dev/null; then
    etcd --version | head -1
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "etcd is missing: installing Debian's etcd-server" >&2
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server) >&2 \
      && command -v etcd >/dev/null; then
      etcd --version | head -1
      return 0
    fi
  fi
  echo "etcd is not installed and cannot be installed here (needs root and apt-get: apt-get install etcd-server)" >&2
  exit 3
}

member() {
  local dir=$1 i=$2
  mkdir -p "$dir"
  local timing=()
  if [ -n "${ETCD_HEARTBEAT_MS:-}" ]; then timing+=(--heartbeat-interval "$ETCD_HEARTBEAT_MS"); fi
  if [ -n "${ETCD_ELECTION_MS:-}" ]; then timing+=(--election-timeout "$ETCD_ELECTION_MS"); fi
  # setsid: the member outlives neither the watchdog nor `stop`, but does not get the benchmark's
  # terminal signals, so the benchmark decides when it dies.
  setsid etcd \
    --name "m$i" \
    --data-dir "$dir/m$i" \
    --listen-client-urls "$(client_url "$i")" \
    --advertise-client-urls "$(client_url "$i")" \
    --listen-peer-urls "$(peer_url "$i")" \
    --initial-advertise-peer-urls "$(peer_url "$i")" \
    --initial-cluster "$(initial_cluster)" \
    --initial-cluster-state new \
    --initial-cluster-token skynet-bench \
    "${timing[@]}" \
    --logger zap --log-outputs "$dir/m$i.log" \
    </dev/null >>"$dir/m$i.out" 2>&1 &
  echo $! >"$dir/m$i.pid"
}

healthy() {
  local i=$1
  # /health answers true once the member has a leader and can serve.
  [ "$(curl -s --max-time 1 "$(client_url "$i")/health" 2>/dev/null)" = '{"health":"true"}' ]
}

start() {
  local dir=$1 watch=${2:-} i deadline
  for ((i = 0; i < MEMBERS; i++)); do
    member "$dir" "$i"
  done
  if [ -n "$watch" ]; then
    # Bounded lifetime: whatever happens to the benchmark, its etcd members go with it.
    setsid bash -c 'while [ -e "/proc/$1" ]; do sleep 1; done; bash "$2" stop "$3"' \
      watchdog "$watch" "$0" "$dir" </dev/null >"$dir/watchdog.out" 2>&1 &
  fi
  deadline=$((SECONDS + 30))
  for ((i = 0; i < MEMBERS; i++)); do
    until healthy "$i"; do
      if ((SECONDS > deadline)); then
        echo "etcd member $i not healthy after 30 s; see $dir/m$i.log" >&2
        stop "$dir"
        exit 1
      fi
      sleep 0.1
    done
  done
  echo "etcd: $MEMBERS members healthy, clients on $(client_url 0) .. $(client_url $((MEMBERS - 1)))"
}

# Whether a process runs. A killed member stays a zombie until init reaps it, and kill -0 would
# still find it.
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

kill9() {
  local dir=$1 i=$2
  kill -9 "$(cat "$dir/m$i.pid")"
}

stop() {
  local dir=$1 i pid pids=()
  for ((i = 0; i < MEMBERS; i++)); do
    [ -f "$dir/m$i.pid" ] || continue
    pid=$(cat "$dir/m$i.pid")
    rm -f "$dir/m$i.pid"
    if alive "$pid" && kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  done
}

case "${1:-}" in
  ensure) ensure ;;
  start) start "$2" "${3:-}" ;;
  member) member "$2" "$3" ;;
  kill) kill9 "$2" "$3" ;;
  stop) stop "$2" ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
