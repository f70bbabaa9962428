#!/bin/bash
# bench/inner.sh full|smoke RESULTS_MD
#
# The body of the benchmark. Runs INSIDE a throwaway systemd host (booted by
# tests/bench.rs, which bench/run invokes), never on a real host: it creates
# network namespaces, nftables tables, transient units and up to 500 gates.
# All traffic goes to addresses inside namespaces made here.
#
# Writes the results as Markdown tables to RESULTS_MD and prints progress.
# smoke: a few seconds per row, to show every row runs (CI); full: the run
# recorded in BENCHMARKS.md.
set -euo pipefail
mode=$1 results=$2
here=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

case $mode in
full) iperf_secs=5 ab_secs=3 rounds=3 cycles=50 scale=500 lists=5 profile=1 profile_conns=3000 ;;
smoke) iperf_secs=1 ab_secs=1 rounds=1 cycles=3 scale=8 lists=2 profile=1 profile_conns=200 ;;
*) echo "usage: $0 full|smoke RESULTS_MD" >&2; exit 2 ;;
esac

UP=10.99.2.1          # upstream netns: iperf3 :5201, nginx :80, sshd-less
GATE=10.231.0.1       # the bench gate's internal address (first gate)

log() { printf '[bench %(%T)T] %s\n' -1 "$*" >&2; }
now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
# percentile P of the numbers on stdin (nearest rank)
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit}; i=int((p*NR+99)/100); if (i<1) i=1; print a[i]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 > 0 && a+0 > 0) printf "%.2fx", a/b; else print "n/a" }'; }

# --- topology ----------------------------------------------------------------
setup() {
  log "setting up namespaces, iperf3, nginx"
  sysctl -qw net.ipv4.ip_forward=1
  ip netns add up
  ip -n up link set lo up
  ip link add up0 type veth peer name eth0 netns up
  ip addr add 10.99.2.0/31 dev up0 && ip link set up0 up
  ip -n up addr add $UP/31 dev eth0 && ip -n up link set eth0 up
  ip -n up route add default via 10.99.2.0
  ip netns exec up iperf3 -s -D -B $UP -p 5201 --logfile /tmp/iperf3.log
  mkdir -p /tmp/nginx
  cat > /tmp/nginx/nginx.conf <<EOF
daemon on;
worker_processes auto;
pid /tmp/nginx/nginx.pid;
error_log /tmp/nginx/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path /tmp/nginx;
  server { listen $UP:80 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
  ip netns exec up nginx -c /tmp/nginx/nginx.conf
  for ns in agent agent2 dagent; do
    ip netns add $ns
    ip -n $ns link set lo up
  done
  # clients in the agent namespaces open many short connections
  for ns in agent agent2 dagent up; do
    ip netns exec $ns sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
  done

  # direct: agent -> router netns -> host -> upstream, routed in the kernel
  ip netns add drouter
  ip -n drouter link set lo up
  ip netns exec drouter sysctl -qw net.ipv4.ip_forward=1
  ip link add eth0 netns dagent type veth peer name int0 netns drouter
  ip -n dagent addr add 10.98.0.0/31 dev eth0 && ip -n dagent link set eth0 up
  ip -n drouter addr add 10.98.0.1/31 dev int0 && ip -n drouter link set int0 up
  ip -n dagent route add default via 10.98.0.1
  ip link add dre0 type veth peer name ext0 netns drouter
  ip addr add 10.98.1.0/31 dev dre0 && ip link set dre0 up
  ip -n drouter addr add 10.98.1.1/31 dev ext0 && ip -n drouter link set ext0 up
  ip -n drouter route add default via 10.98.1.0
  ip route add 10.98.0.0/31 via 10.98.1.1

  # the gatectl gate, and socat and systemd-socket-proxyd in its netns
  mkdir -p /etc/gatectl/bottles
  cat > /etc/gatectl/bottles/bench.toml <<EOF
agent_netns = "agent"
[[ssh]]
Host = "iperf"
Hostname = "$UP"
Port = 5201
[[ssh]]
Host = "http"
Hostname = "$UP"
Port = 80
EOF
  gatectl start bench >/dev/null
  local netns=/run/netns/gate-bench
  # The gate netns's own table admits the agent to gatectl's listen ports
  # only: admit it to the comparison forwarders' ports below and those of
  # pipe_sizes() as well (they reach the same declared upstream ports,
  # which the table allows).
  ip netns exec gate-bench nft add element inet gatectl listen '{ 31000, 31001, 32000, 32001, 33001, 33002, 33003, 34001 }'
  systemd-run --quiet --unit bench-socat-iperf -p NetworkNamespacePath=$netns -p DynamicUser=yes \
    socat TCP-LISTEN:31000,bind=$GATE,reuseaddr,fork,backlog=4096 TCP:$UP:5201
  systemd-run --quiet --unit bench-socat-http -p NetworkNamespacePath=$netns -p DynamicUser=yes \
    socat TCP-LISTEN:31001,bind=$GATE,reuseaddr,fork,backlog=4096 TCP:$UP:80
  systemd-run --quiet --unit bench-proxyd-iperf -p NetworkNamespacePath=$netns -p DynamicUser=yes \
    systemd-socket-activate -l $GATE:32000 /lib/systemd/systemd-socket-proxyd $UP:5201
  systemd-run --quiet --unit bench-proxyd-http -p NetworkNamespacePath=$netns -p DynamicUser=yes \
    systemd-socket-activate -l $GATE:32001 /lib/systemd/systemd-socket-proxyd --connections-max=1024 $UP:80
  # The gate's own forwarder first (a request starts it), so that it holds
  # the gate netns's counters socket (what `gatectl status bench` reads)
  # before the forwarders run by hand in the same netns try to.
  wait_listen gate-bench 30001
  ip netns exec agent timeout 10 bash -c "exec 3<>/dev/tcp/$GATE/30001; printf 'GET / HTTP/1.0\r\n\r\n' >&3; cat <&3 >/dev/null"
  systemctl is-active --quiet gate-bench.service
  # diagnostic: the same forwarder run by hand, logging to /dev/null instead
  # of the journal (what the per-connection audit event costs)
  ip netns exec gate-bench gatectl forward --slug nojournal --listen $GATE \
    --route "34001,http,$UP:80" >/dev/null 2>&1 &
  # a second real gate, for agent2, whose forwarder writes no audit record:
  # its unit's log level (a drop-in) leaves out the info events
  cat > /etc/gatectl/bottles/noaudit.toml <<EOF
agent_netns = "agent2"
[[ssh]]
Host = "http"
Hostname = "$UP"
Port = 80
EOF
  mkdir -p /run/systemd/system/gate-noaudit.service.d
  printf '[Service]\nEnvironment=RUST_LOG=warn\n' > /run/systemd/system/gate-noaudit.service.d/bench-no-audit.conf
  systemctl daemon-reload
  gatectl start noaudit >/dev/null
  NOAUDIT=$(gatectl ssh-config noaudit | awk '/HostName/ {print $2}')
  PATHS[noaudit]="agent2 $NOAUDIT - 30000"
  wait_listen gate-noaudit 30000
  local port
  for port in 30000 30001 31000 31001 32000 32001 34001; do wait_listen gate-bench $port; done
  wait_listen up 5201
  wait_listen up 80
}

wait_listen() { # NETNS PORT: waits until something listens on PORT in NETNS
  # (checked with ss, not by connecting: a probe connection would occupy
  # iperf3's single-client server)
  for _ in $(seq 100); do
    [[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]] && return 0
    sleep 0.05
  done
  echo "nothing listens on port $2 in netns $1" >&2
  return 1
}

# --- throughput and connections per second -----------------------------------
# path name -> "NETNS ADDR IPERF_PORT HTTP_PORT"
declare -A PATHS=(
  [gatectl]="agent $GATE 30000 30001"
  [proxyd]="agent $GATE 32000 32001"
  [socat]="agent $GATE 31000 31001"
  [direct]="dagent $UP 5201 80"
  [nojournal]="agent $GATE - 34001"
)
# (and [noaudit], the second gate, set by setup)
ORDER=(gatectl proxyd socat direct)
# the rows of connections per second
CPS_ORDER=(gatectl noaudit proxyd socat direct nojournal)
declare -A GBIT CPS RUNS
# audit records of the gatectl gate counted in the journal, and the
# connections its forwarder counted, over the ab runs of wire()
declare -A AUDIT=([records]=0 [connections]=0 [short]=0)

iperf_gbit() { # NETNS ADDR PORT STREAMS -> Gbit/s received
  local out try
  for try in 1 2 3; do
    out=$(ip netns exec "$1" iperf3 -c "$2" -p "$3" -P "$4" -t $iperf_secs -O 1 -f m --connect-timeout 3000 2>&1) && break
    echo "iperf3 via $2:$3 failed (try $try): $out" >&2
    [[ $try == 3 ]] && { echo fail; return; }
    sleep 1 # iperf3's server takes one client at a time; let it reset
  done
  grep receiver <<<"$out" | tail -1 |
    awk '{for (i=1;i<=NF;i++) if ($i=="Mbits/sec") {printf "%.2f\n", $(i-1)/1000; exit}}'
}

median() { tr ' ' '\n' | grep -v '^$' | pct 50; }

AB_FAILURES=/tmp/ab-failures # one "PATH FAILED_REQUESTS" line per failed ab run
: >"$AB_FAILURES"

ab_cps() { # NETNS ADDR PORT PATH -> requests (= connections) per second
  local out
  out=$(ip netns exec "$1" ab -q -r -c 32 -t $ab_secs -n 100000000 -s 5 "http://$2:$3/" 2>&1) || true
  local failed rps
  failed=$(awk '/^Failed requests/ {print $3}' <<<"$out")
  rps=$(awk '/^Requests per second/ {printf "%.0f\n", $4}' <<<"$out")
  if [[ -z ${failed:-} || -z ${rps:-} ]]; then
    echo "ab via $2:$3 printed no result: $out" >&2
    echo "$4 (no result)" >>"$AB_FAILURES"
  elif [[ $failed != 0 ]]; then
    echo "ab via $2:$3: $failed failed requests" >&2
    echo "$4 $failed" >>"$AB_FAILURES"
  fi
  echo "${rps:-0}"
}

cursor() { journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }

gate_total() { # SLUG -> connections its forwarder counted so far
  gatectl status "$1" --json | jq '.counters.total // 0'
}

audit_records() { # SLUG CURSOR -> the gate's audit records in the journal after CURSOR
  # (matched by jq: journalctl --after-cursor with a field match skips the
  # first matching entry when the cursor's own entry does not match)
  journalctl -q --no-pager --after-cursor="$2" -o json --output-fields=GATE_SLUG,GATE_OUTCOME |
    jq -c --arg slug "$1" 'select(.GATE_SLUG == $slug and .GATE_OUTCOME != null)' | wc -l
}

audited_cps() { # ab_cps through the gatectl gate, counting its audit records in AUDIT
  local before total records connections
  before=$(cursor)
  total=$(gate_total bench)
  CPS_AUDITED=$(ab_cps agent $GATE 30001 gatectl)
  # wait for the last records (written in batches) and connections (closed
  # by ab at its time limit) to be counted
  for _ in $(seq 50); do
    connections=$(( $(gate_total bench) - total ))
    records=$(audit_records bench "$before")
    (( records >= connections )) && break
    sleep 0.1
  done
  AUDIT[records]=$(( AUDIT[records] + records ))
  AUDIT[connections]=$(( AUDIT[connections] + connections ))
  if (( connections <= 0 || records < connections )); then
    AUDIT[short]=$(( AUDIT[short] + 1 ))
    log "gatectl gate: $records audit records in the journal for $connections connections"
  fi
}

audit_column() { # PATH -> the "audit records / connections" cell
  case $1 in
  gatectl)
    if (( AUDIT[short] > 0 )); then
      echo "${AUDIT[records]} / ${AUDIT[connections]} (records missing, or no connection counted, in ${AUDIT[short]} run(s); the figure is not valid)"
    else
      echo "${AUDIT[records]} / ${AUDIT[connections]} (all)"
    fi ;;
  noaudit) echo "none (off: RUST_LOG=warn)" ;;
  nojournal) echo "to /dev/null" ;;
  *) echo "-" ;;
  esac
}

ab_failed() { # PATH -> " (N failed requests)" when an ab run of PATH had failures
  local n
  n=$(awk -v p="$1" '$1 == p {if ($2 ~ /^[0-9]+$/) s += $2; else s = "no result"} END {print s}' "$AB_FAILURES")
  [[ -n $n ]] && echo " ($n failed requests; the figure is not valid)"
  true
}

wire() { # each path once per round, interleaved; the median of the rounds
  local round p streams ns addr iport hport
  declare -A runs
  for round in $(seq $rounds); do
    for streams in 1 4; do
      for p in "${ORDER[@]}"; do
        read -r ns addr iport _ <<<"${PATHS[$p]}"
        runs[$p,$streams]+=" $(iperf_gbit "$ns" "$addr" "$iport" $streams)"
      done
    done
    for p in "${CPS_ORDER[@]}"; do
      read -r ns addr _ hport <<<"${PATHS[$p]}"
      if [[ $p == gatectl ]]; then
        audited_cps
        runs[$p,cps]+=" $CPS_AUDITED"
      else
        runs[$p,cps]+=" $(ab_cps "$ns" "$addr" "$hport" "$p")"
      fi
    done
    log "round $round: $(for k in "${!runs[@]}"; do printf '%s=[%s] ' "$k" "${runs[$k]# }"; done)"
  done
  for p in "${CPS_ORDER[@]}"; do
    for streams in 1 4; do
      [[ -z ${runs[$p,$streams]:-} ]] || GBIT[$p,$streams]=$(median <<<"${runs[$p,$streams]}")
    done
    CPS[$p]=$(median <<<"${runs[$p,cps]}")
    RUNS[$p]="${runs[$p,1]:-} / ${runs[$p,4]:-} / ${runs[$p,cps]# }"
  done
}

pipe_sizes() { # throughput of a hand-run forwarder per pipe size
  declare -gA PIPE
  local port=33000
  for size in 65536 262144 1048576; do
    port=$((port + 1))
    ip netns exec gate-bench gatectl forward --slug pipes --pipe-size "$size" \
      --listen $GATE --route "$port,iperf,$UP:5201" >/tmp/pipes-$size.log 2>&1 &
    local pid=$!
    wait_listen gate-bench $port
    PIPE[$size,1]=$(iperf_gbit agent $GATE $port 1)
    PIPE[$size,4]=$(iperf_gbit agent $GATE $port 4)
    kill "$pid" && wait "$pid" || true
    log "pipe size $size: ${PIPE[$size,1]} / ${PIPE[$size,4]} Gbit/s (1 / 4 streams)"
  done
}

profile_cpu() { # where the CPU goes while traffic crosses the gatectl gate and proxyd
  (( profile )) && command -v perf >/dev/null || return 0
  log "profiling (perf record -a -g) iperf3 and ab through gatectl and proxyd"
  local name path port dir
  dir=$(dirname "$results")
  for name in iperf ab; do
    for path in gatectl proxyd; do
      perf record -q -a -g -o /tmp/perf-$name-$path.data -- sleep 3 2>/dev/null &
      local rec=$!
      if [[ $name == iperf ]]; then
        port=$([[ $path == gatectl ]] && echo 30000 || echo 32000)
        ip netns exec agent iperf3 -c $GATE -p $port -t 3 >/dev/null 2>&1 || true
      else
        port=$([[ $path == gatectl ]] && echo 30001 || echo 32001)
        ip netns exec agent ab -q -r -c 32 -t 3 -n 100000000 "http://$GATE:$port/" >/dev/null 2>&1 || true
      fi
      wait $rec || true
      perf report -i /tmp/perf-$name-$path.data --no-children --sort comm --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9.]+%' > "$dir/perf-$name-$path.comm" || true
    done
    {
      echo "## perf: $name through the gatectl gate: top symbols by process"
      perf report -i /tmp/perf-$name-gatectl.data --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null |
        grep -v '^$' | grep -v '^#' | head -n 40 || true
    } > "$dir/perf-$name.txt"
  done
}

syscalls_per_connection() { # strace -c of the forwarder process during ab -n N
  declare -gA SYSCALLS
  local n=$(( profile_conns )) path unit port pid tracer
  for path in gatectl proxyd; do
    unit=$([[ $path == gatectl ]] && echo gate-bench.service || echo bench-proxyd-http.service)
    port=$([[ $path == gatectl ]] && echo 30001 || echo 32001)
    pid=$(systemctl show -p MainPID --value $unit)
    strace -c -f -p "$pid" -o /tmp/syscalls-$path 2>/dev/null &
    tracer=$!
    sleep 0.5
    ip netns exec agent ab -q -r -c 32 -n $n "http://$GATE:$port/" >/dev/null 2>&1 || true
    kill -INT $tracer 2>/dev/null; wait $tracer 2>/dev/null || true
    SYSCALLS[$path]=$(awk -v n=$n '$NF == "total" {printf "%.1f", $4 / n}' /tmp/syscalls-$path)
    SYSCALLS[$path,top]=$(awk -v n=$n '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {printf "%s %.1f, ", $NF, $4 / n}' /tmp/syscalls-$path | head -c 300)
  done
  log "system calls per connection: gatectl ${SYSCALLS[gatectl]}, proxyd ${SYSCALLS[proxyd]}"
}

# --- start and stop latency --------------------------------------------------
latency() {
  log "start/stop latency, $cycles cycles each"
  cat > /etc/gatectl/bottles/lat.toml <<EOF
[[ssh]]
Host = "up"
Hostname = "$UP"
Port = 80
EOF
  local t i
  : > /tmp/g-start; : > /tmp/g-stop; : > /tmp/s-start; : > /tmp/s-stop
  for i in $(seq "$cycles"); do
    t=$(now_ns); gatectl start lat >/dev/null; ms_since "$t" >> /tmp/g-start
    t=$(now_ns); gatectl stop lat >/dev/null; ms_since "$t" >> /tmp/g-stop
    t=$(now_ns); "$here/shellgate" start lat 1 $UP 80; ms_since "$t" >> /tmp/s-start
    t=$(now_ns); "$here/shellgate" stop lat 1 $UP 80; ms_since "$t" >> /tmp/s-stop
  done
  declare -gA LAT
  local f
  for f in g-start g-stop s-start s-stop; do
    LAT[$f,50]=$(pct 50 < /tmp/$f)
    LAT[$f,90]=$(pct 90 < /tmp/$f)
  done
  log "gatectl start p50 ${LAT[g-start,50]} ms, stop p50 ${LAT[g-stop,50]} ms; script start p50 ${LAT[s-start,50]} ms, stop p50 ${LAT[s-stop,50]} ms"
  # where a start's time goes: wall time per system call of one start
  strace -f -c -o /tmp/start.strace gatectl start lat >/dev/null 2>&1 || true
  gatectl stop lat >/dev/null
  strace -f -tt -T -o /tmp/start.trace gatectl start lat >/dev/null 2>&1 || true
  gatectl stop lat >/dev/null
  # one start step by step, then the first connection, which makes systemd
  # start the forwarder (sandbox set-up, exec, READY=1), and a second one
  local since addr t first second
  since=$(date '+%Y-%m-%d %H:%M:%S.%6N')
  echo "$(date +%H:%M:%S.%6N) gatectl start lat: begins" > /tmp/start.journal
  gatectl start --timings lat > /tmp/start.timings 2>&1
  echo "$(date +%H:%M:%S.%6N) gatectl start lat: returned" >> /tmp/start.journal
  addr=$(gatectl ssh-config lat | awk '/HostName/ {print $2}')
  t=$(now_ns); http_get "$addr"; first=$(ms_since "$t")
  t=$(now_ns); http_get "$addr"; second=$(ms_since "$t")
  local props inactive exec active
  props=$(systemctl show -p InactiveExitTimestampMonotonic,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic gate-lat.service)
  inactive=$(awk -F= '/^InactiveExit/ {print $2}' <<<"$props")
  exec=$(awk -F= '/^ExecMainStart/ {print $2}' <<<"$props")
  active=$(awk -F= '/^ActiveEnter/ {print $2}' <<<"$props")
  UNIT_SPLIT="First HTTP request through the new gate: $first ms (systemd starts the forwarder: activating → main process forked $(((exec - inactive) / 1000)) ms, forked → READY=1 (sandbox set-up in the child, exec, forwarder start-up) $(((active - exec) / 1000)) ms); the second request: $second ms."
  sleep 0.2
  journalctl --since "$since" -o short-precise --no-pager -u gate-lat.socket -u gate-lat.service |
    grep -v '^-- ' | sed -E 's/^[A-Z][a-z]{2} [0-9]+ //' >> /tmp/start.journal || true
  gatectl stop lat >/dev/null
}

http_get() { # ADDR: one HTTP request to ADDR:30000, waits for the reply
  timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/30000"; printf "GET / HTTP/1.0\r\n\r\n" >&3; cat <&3 >/dev/null' _ "$1"
}

# --- scale ---------------------------------------------------------------------
scale() {
  local i
  for i in $(seq 0 $((scale - 1))); do
    printf '[[ssh]]\nHost = "http"\nHostname = "%s"\nPort = 80\n' $UP > /etc/gatectl/bottles/s$i.toml
  done
  declare -gA SCALE
  log "starting $scale gates one after another"
  local t
  t=$(now_ns)
  : > /tmp/each-start
  local t1
  for i in $(seq 0 $((scale - 2))); do
    t1=$(now_ns); gatectl start s$i >/dev/null; ms_since "$t1" >> /tmp/each-start
  done
  # the last start, traced: where a start's time goes with many gates up
  t1=$(now_ns)
  strace -f -c -o /tmp/start-last.strace gatectl start s$((scale - 1)) >/dev/null
  SCALE[seq_start]=$(( $(ms_since "$t") - $(ms_since "$t1") ))
  local tenth=$(( (scale + 9) / 10 ))
  SCALE[first]=$(head -n $tenth /tmp/each-start | pct 50)
  SCALE[last]=$(tail -n $tenth /tmp/each-start | pct 50)
  log "$scale sequential starts: ${SCALE[seq_start]} ms"

  # a gate with no connection yet has no forwarder process: only its socket
  # unit, whose sockets systemd holds
  SCALE[idle_forwarders]=$(systemctl list-units --plain --no-legend --state=running 'gate-s*.service' | wc -l)
  # memory of idle forwarders: started by one request each, then idle
  : > /tmp/mem-idle; : > /tmp/rss-idle
  local sample=$(( scale < 20 ? scale : 20 )) a
  for i in $(seq 0 $((sample - 1))); do
    a=$(gatectl ssh-config s$i | awk '/HostName/ {print $2}')
    http_get "$a"
  done
  sleep 1
  for i in $(seq 0 $((sample - 1))); do
    unit_memory gate-s$i.service >> /tmp/mem-idle
    unit_rss gate-s$i.service >> /tmp/rss-idle
  done
  SCALE[mem_idle]=$(pct 50 < /tmp/mem-idle)
  SCALE[rss_idle]=$(pct 50 < /tmp/rss-idle)
  # 10 open sessions (HTTP keep-alive, one request each) through gate s1
  local addr
  addr=$(gatectl ssh-config s1 | awk '/HostName/ {print $2}')
  sessions "$addr" 10 &
  local holder=$!
  sleep 1
  SCALE[mem_10]=$(unit_memory gate-s1.service)
  SCALE[rss_10]=$(unit_rss gate-s1.service)
  kill $holder 2>/dev/null; wait $holder 2>/dev/null || true

  : > /tmp/list
  for i in $(seq $lists); do
    t=$(now_ns); gatectl list >/dev/null; ms_since "$t" >> /tmp/list
  done
  SCALE[list]=$(pct 50 < /tmp/list)
  SCALE[list_n]=$(gatectl list | grep -c running || true)
  log "idle forwarder ${SCALE[mem_idle]} KiB (RSS ${SCALE[rss_idle]} KiB), 10 sessions ${SCALE[mem_10]} KiB; list ${SCALE[list]} ms with ${SCALE[list_n]} running"

  t=$(now_ns)
  for i in $(seq 0 $((scale - 1))); do gatectl stop s$i >/dev/null; done
  SCALE[seq_stop]=$(ms_since "$t")
  log "starting $scale gates 8 at a time"
  t=$(now_ns)
  seq 0 $((scale - 1)) | sed 's/^/s/' | xargs -P 8 -n 1 gatectl start >/dev/null
  SCALE[par_start]=$(ms_since "$t")
  SCALE[par_n]=$(gatectl list | grep -c running || true)
  t=$(now_ns)
  seq 0 $((scale - 1)) | sed 's/^/s/' | xargs -P 8 -n 1 gatectl stop >/dev/null
  SCALE[par_stop]=$(ms_since "$t")
  log "parallel start ${SCALE[par_start]} ms (${SCALE[par_n]} running), stop ${SCALE[par_stop]} ms"
}

unit_memory() { # KiB, from systemd's MemoryCurrent
  local b
  b=$(systemctl show -p MemoryCurrent --value "$1")
  [[ $b =~ ^[0-9]+$ && $b != 18446744073709551615 ]] && echo $((b / 1024)) || echo n/a
}

unit_rss() { # KiB, VmRSS of the unit's main process
  local pid
  pid=$(systemctl show -p MainPID --value "$1")
  awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo n/a
}

sessions() { # ADDR N: opens N keep-alive HTTP sessions to ADDR:30000, holds them
  local i fd
  for i in $(seq "$2"); do
    exec {fd}<>"/dev/tcp/$1/30000"
    printf 'GET / HTTP/1.1\r\nHost: bench\r\n\r\n' >&$fd
    head -c 100 <&$fd >/dev/null & # read the reply
  done
  exec sleep 3600 # holds the sessions until killed
}

# --- report --------------------------------------------------------------------
report() {
  {
    echo "### Throughput (iperf3, ${iperf_secs} s, agent netns → gate → upstream netns)"
    echo
    echo "Median of $rounds rounds, paths interleaved in each round. The gatectl unit relayed with splice(2): $SPLICE."
    echo
    echo "| path | 1 stream Gbit/s | 4 streams Gbit/s | gatectl ÷ path (1 / 4) | runs: 1 stream / 4 streams / conn/s |"
    echo "| --- | ---: | ---: | ---: | --- |"
    for p in "${ORDER[@]}"; do
      echo "| $p | ${GBIT[$p,1]} | ${GBIT[$p,4]} | $(ratio "${GBIT[gatectl,1]}" "${GBIT[$p,1]}") / $(ratio "${GBIT[gatectl,4]}" "${GBIT[$p,4]}") | ${RUNS[$p]} |"
    done
    echo
    echo "### Pipe size of the splice relay (hand-run \`gatectl forward\` in the same netns)"
    echo
    echo "| pipe size | 1 stream Gbit/s | 4 streams Gbit/s |"
    echo "| ---: | ---: | ---: |"
    for s in 65536 262144 1048576; do
      echo "| $((s / 1024)) KiB | ${PIPE[$s,1]} | ${PIPE[$s,4]} |"
    done
    echo
    echo "### New connections per second (ab -c 32, ${ab_secs} s, nginx upstream)"
    echo
    echo "Median of $rounds rounds, paths interleaved in each round; every run in the last column. Audit records: the gatectl gate's records in the journal (entries with \`GATE_SLUG=bench\` and a \`GATE_OUTCOME\` after a cursor taken before each of its ab runs) against the connections its forwarder counted in those runs (\`gatectl status\`)."
    echo
    echo "| path | conn/s | path ÷ proxyd | audit records / connections | runs |"
    echo "| --- | ---: | ---: | --- | --- |"
    local label
    for p in "${CPS_ORDER[@]}"; do
      case $p in
      noaudit) label="gatectl, no audit record (a second gate, RUST_LOG=warn)" ;;
      nojournal) label="gatectl forward run by hand, audit log to /dev/null (diagnostic)" ;;
      *) label=$p ;;
      esac
      echo "| $label | ${CPS[$p]}$(ab_failed "$p") | $(ratio "${CPS[$p]}" "${CPS[proxyd]}") | $(audit_column "$p") | ${RUNS[$p]##*/ } |"
    done
    echo
    echo "System calls per connection in the forwarder process (strace -c -f during ab -c 32 -n $profile_conns):"
    echo
    echo "- gatectl: ${SYSCALLS[gatectl]} (${SYSCALLS[gatectl,top]%, })"
    echo "- proxyd: ${SYSCALLS[proxyd]} (${SYSCALLS[proxyd,top]%, })"
    echo
    echo "### Start and stop latency ($cycles cycles)"
    echo
    echo "| | p50 ms | p90 ms | script p50 ÷ gatectl p50 |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| gatectl start | ${LAT[g-start,50]} | ${LAT[g-start,90]} | $(ratio "${LAT[s-start,50]}" "${LAT[g-start,50]}") |"
    echo "| gatectl stop | ${LAT[g-stop,50]} | ${LAT[g-stop,90]} | $(ratio "${LAT[s-stop,50]}" "${LAT[g-stop,50]}") |"
    echo "| shell script start | ${LAT[s-start,50]} | ${LAT[s-start,90]} | |"
    echo "| shell script stop | ${LAT[s-stop,50]} | ${LAT[s-stop,90]} | |"
    echo
    echo "### Scale ($scale gates)"
    echo
    echo "| | value |"
    echo "| --- | ---: |"
    echo "| start $scale gates one after another | ${SCALE[seq_start]} ms (the last one, run under strace, not counted) |"
    echo "| one start, p50 of the first tenth / of the last tenth | ${SCALE[first]} ms / ${SCALE[last]} ms |"
    echo "| stop them one after another | ${SCALE[seq_stop]} ms |"
    echo "| start $scale gates 8 at a time | ${SCALE[par_start]} ms (${SCALE[par_n]} running) |"
    echo "| stop them 8 at a time | ${SCALE[par_stop]} ms |"
    echo "| forwarders running before any connection ($scale gates up) | ${SCALE[idle_forwarders]} |"
    echo "| idle forwarder after one request, MemoryCurrent (median of $(wc -l < /tmp/mem-idle)) | ${SCALE[mem_idle]} KiB |"
    echo "| idle forwarder after one request, VmRSS (median) | ${SCALE[rss_idle]} KiB |"
    echo "| forwarder with 10 open sessions, MemoryCurrent | ${SCALE[mem_10]} KiB |"
    echo "| forwarder with 10 open sessions, VmRSS | ${SCALE[rss_10]} KiB |"
    echo "| \`gatectl list\` with ${SCALE[list_n]} gates running (median of $lists) | ${SCALE[list]} ms |"
    echo
    echo "### Where one \`gatectl start\` spends its time (strace -f -c, top 12 by time)"
    echo
    echo "With no other gate up:"
    echo
    echo '```'
    head -n 16 /tmp/start.strace 2>/dev/null || echo "(strace unavailable)"
    echo '```'
    echo
    echo "One \`gatectl start --timings\`:"
    echo
    echo '```'
    cat /tmp/start.timings
    echo '```'
    echo
    echo "That start and the first connection seen from the journal (systemd's and the forwarder's messages):"
    echo
    echo '```'
    sort /tmp/start.journal | cut -c1-150
    echo '```'
    echo
    echo "$UNIT_SPLIT"
    echo
    echo "The last of $scale gates started one after another:"
    echo
    echo '```'
    head -n 16 /tmp/start-last.strace 2>/dev/null || echo "(strace unavailable)"
    echo '```'
    echo
    echo "### CPU profile (perf record -a over both CPUs, share of samples by process)"
    echo
    local name path
    for name in iperf ab; do
      for path in gatectl proxyd; do
        echo "$name through $path: $(awk '{printf "%s %s, ", $2, $1}' "$(dirname "$results")/perf-$name-$path.comm" 2>/dev/null | head -c 200)"
        echo
      done
    done
  } > "$results"
}

setup
wire
# the unit must have spliced: the pool warns once if splice(2) is refused
if journalctl -u gate-bench.service --no-pager | grep -q "splice(2) is unavailable"; then
  SPLICE="no: the forwarder fell back to copying (see journalctl -u gate-bench)"
else
  SPLICE="yes"
fi
profile_cpu
syscalls_per_connection
pipe_sizes
latency
scale
report
cp /tmp/start.trace "$(dirname "$results")/start.trace" 2>/dev/null || true
if [[ -s $AB_FAILURES ]]; then
  log "ab had failed requests: $(tr '\n' ';' <"$AB_FAILURES")"
  # A connection rate with failed requests is no figure to record.
  [[ $mode == smoke ]] || exit 1
fi
log "done"
