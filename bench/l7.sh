#!/usr/bin/env bash
# L7 side by side: direct to an nginx backend, nginx as proxy, weir with its
# full Wasm pipeline. wrk -t1, 2-byte responses, keep-alive; everything pinned
# to CPU 0 (the most repeatable layout on a 2-core machine). Runs are
# interleaved (direct, nginx, weir, direct, ...) and medians reported with
# each proxy's CPU time per request.
#
#   bench/l7.sh [rounds=3] [seconds=10] [connections=50]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-10}; conns=${3:-50}
need=()
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
cargo build --release -q -p weir
dir=$(mktemp -d /tmp/weir-bench.XXXXXX)
mkdir -p "$dir"/{run,logs,www,tmp}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
sub() { sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$2|g" -e "s|@LISTEN@|$3|g" "$1"; }
start() { taskset -c 0 "$@" & pids+=($!); }
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

for port in 9001 9002; do
  sub bench/peers/backend.conf $port "" > "$dir/backend$port.conf"
  start /usr/sbin/nginx -e "$dir/logs/err" -c "$dir/backend$port.conf"
done
sub bench/peers/nginx-proxy.conf "" 127.0.0.1:8081 > "$dir/nginx-proxy.conf"
start /usr/sbin/nginx -e "$dir/logs/err" -c "$dir/nginx-proxy.conf"
nginx_pid=$!
sub bench/weir-l7.toml "" 127.0.0.1:8082 > "$dir/weir.toml"
WEIR_CACHE_DIR="$dir/cache" start target/release/weir --log-level warn run -c "$dir/weir.toml"
weir_pid=$!
for p in 9001 9002 8081 8082; do wait_port $p; done

cpu_ticks() { # utime+stime of a process and its live children (nginx workers), in clock ticks
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat")))
  done
  echo $total
}
hz=$(getconf CLK_TCK)
declare -A rps p50 p99 cpu
run() { # name port pid
  local before after out
  before=$([ -n "$3" ] && cpu_ticks "$3" || echo 0)
  out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$2/ok")
  after=$([ -n "$3" ] && cpu_ticks "$3" || echo 0)
  local r reqs
  r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps[$1]+="$r "
  p50[$1]+="$(awk '$1=="50%" {print $2}' <<<"$out" | to_us) "
  p99[$1]+="$(awk '$1=="99%" {print $2}' <<<"$out" | to_us) "
  if [ -n "$3" ]; then
    cpu[$1]+="$(awk -v t=$((after-before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.2f", t/hz*1e6/n}') "
  fi
}
to_us() { # wrk latency ("850.00us", "1.20ms", "2.00s") in µs
  awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); m=1} else if (v ~ /ms$/) {sub(/ms$/,"",v); m=1000} else {sub(/s$/,"",v); m=1000000}; printf "%.0f", v*m}'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for i in $(seq "$rounds"); do
  run direct 9001 ""
  run nginx 8081 "$nginx_pid"
  run weir 8082 "$weir_pid"
done
d=$(median <<<"${rps[direct]}")
printf '\n| %-6s | req/s (median of %d) | ratio to direct | p50 | p99 | CPU per request |\n|---|---|---|---|---|---|\n' target "$rounds"
for t in direct nginx weir; do
  r=$(median <<<"${rps[$t]}")
  printf '| %-6s | %s | %.2f | %s | %s | %s |\n' "$t" "$r" "$(awk -v a="$r" -v b="$d" 'BEGIN {print a/b}')" \
    "$(median <<<"${p50[$t]}") µs" "$(median <<<"${p99[$t]}") µs" "$( [ $t = direct ] && echo - || echo "$(median <<<"${cpu[$t]}") µs")"
done
echo; echo "all runs req/s: direct ${rps[direct]}| nginx ${rps[nginx]}| weir ${rps[weir]}"
