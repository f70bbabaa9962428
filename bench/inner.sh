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
full) iperf_secs=5 ab_secs=3 rounds=3 cycles=50 scale=${GATECTL_BENCH_SCALE:-2000} checkpoints="500 1000" sg_scale=200 lists=3 profile_conns=3000 ;;
smoke) iperf_secs=1 ab_secs=1 rounds=1 cycles=3 scale=8 checkpoints="4" sg_scale=4 lists=2 profile_conns=200 ;;
*) echo "usage: $0 full|smoke RESULTS_MD" >&2; exit 2 ;;
esac

UP=10.99.2.1          # upstream netns: iperf3 :5201, nginx :80, sshd :2222
UP2=10.99.3.1         # the same netns's second link: nginx :80, for the second gate
GATE=10.231.0.1       # the bench gate's internal address (first gate)

log() { printf '[bench %(%T)T] %s\n' -1 "$*" >&2; }
now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
mkfifo /tmp/nap && exec {nap_fd}<>/tmp/nap # never written: a read with -t of it sleeps
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
  # The second gate reaches nginx at another address. Both gates' upstream
  # connections are masqueraded to the host's address of the link they
  # leave by; through one link, the second gate's SYNs would meet the
  # TIME_WAIT entries of the first gate's connections under other TCP
  # timestamps (each netns picks its own), which nginx's netns drops
  # (PAWS): 1 s retransmissions, and a rate that says nothing of the gate.
  ip link add up1 type veth peer name eth1 netns up
  ip addr add 10.99.3.0/31 dev up1 && ip link set up1 up
  ip -n up addr add $UP2/31 dev eth1 && ip -n up link set eth1 up
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
  server { listen $UP:80 backlog=4096; listen $UP2:80 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
  ip netns exec up nginx -c /tmp/nginx/nginx.conf
  # an sshd of the bench's own, for the first SSH banner through a new gate
  mkdir -p -m 0700 /tmp/sshd && mkdir -p -m 0755 /run/sshd
  ssh-keygen -q -t ed25519 -N '' -C bench -f /tmp/sshd/host_key
  printf '%s\n' "ListenAddress $UP:2222" "HostKey /tmp/sshd/host_key" "PidFile /tmp/sshd/sshd.pid" \
    "UsePAM no" "PasswordAuthentication no" "KbdInteractiveAuthentication no" "UseDNS no" \
    "MaxStartups 100:30:200" > /tmp/sshd/sshd_config
  ip netns exec up /usr/sbin/sshd -f /tmp/sshd/sshd_config -E /tmp/sshd/sshd.log
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
  # The traffic rows measure and strace the bench gate's forwarder between
  # rounds: it must not exit for being idle meanwhile.
  start_never_idle bench
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
Hostname = "$UP2"
Port = 80
EOF
  mkdir -p /run/systemd/system/gate-noaudit.service.d
  printf '[Service]\nEnvironment=RUST_LOG=warn\n' > /run/systemd/system/gate-noaudit.service.d/bench-no-audit.conf
  systemctl daemon-reload
  # idle between its rounds, it must not exit either (a cold start in a row)
  start_never_idle noaudit
  NOAUDIT=$(config_address noaudit)
  PATHS[noaudit]="agent2 $NOAUDIT - 30000"
  wait_listen gate-noaudit 30000
  local port
  for port in 30000 30001 31000 31001 32000 32001 34001; do wait_listen gate-bench $port; done
  wait_listen up 5201
  wait_listen up 80
  wait_listen up 2222
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

cpu_per_request() { # CPU time per request of each process while ab -c 32 crosses gatectl and proxyd
  # From the processes' utime and stime (/proc/PID/stat, 10 ms ticks) and
  # the whole machine's (/proc/stat): `perf record -a` on this kind of VM
  # attributes nearly every sample to the idle task, so it cannot say.
  declare -gA CPU_SPLIT
  local path unit port relay out n t0 t1
  ticks() { [[ -r /proc/$1/stat ]] && awk -v f="$2" '{print $f}' "/proc/$1/stat" || echo 0; }
  cpu_ticks() { local total=0 p; for p in "$@"; do total=$(( total + $(ticks "$p" 14) + $(ticks "$p" 15) )); done; echo $total; }
  all_busy() { awk '/^cpu / {print $2+$3+$4+$6+$7+$8}' /proc/stat; }
  for path in gatectl proxyd; do
    unit=$([[ $path == gatectl ]] && echo gate-bench.service || echo bench-proxyd-http.service)
    port=$([[ $path == gatectl ]] && echo 30001 || echo 32001)
    relay=$(systemctl show -p MainPID --value $unit)
    local -a journald=($(pgrep -x systemd-journal)) nginx=($(pgrep -x nginx))
    local -A before=()
    before[ru]=$(ticks "$relay" 14) before[rs]=$(ticks "$relay" 15)
    before[j]=$(cpu_ticks "${journald[@]}") before[n]=$(cpu_ticks "${nginx[@]}")
    t0=$(all_busy)
    out=$(ip netns exec agent ab -q -r -c 32 -t $ab_secs -n 100000000 "http://$GATE:$port/" 2>&1) || true
    t1=$(all_busy)
    n=$(awk '/^Complete requests/ {print $3}' <<<"$out")
    if [[ -z $n || $n -eq 0 ]]; then CPU_SPLIT[$path]="| $path | n/a | | | | | |"; continue; fi
    CPU_SPLIT[$path]=$(awk -v n="$n" -v rps="$(awk '/^Requests per second/ {printf "%d", $4}' <<<"$out")" \
      -v ru=$(( $(ticks "$relay" 14) - before[ru] )) -v rs=$(( $(ticks "$relay" 15) - before[rs] )) \
      -v j=$(( $(cpu_ticks "${journald[@]}") - before[j] )) -v ng=$(( $(cpu_ticks "${nginx[@]}") - before[n] )) \
      -v all=$(( t1 - t0 )) -v path="$path" 'BEGIN {
        us = 10000 / n  # one 10 ms tick, in microseconds per request
        printf "| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f |", path, rps, ru * us, rs * us, j * us, ng * us, all * us }')
  done
  log "CPU per request: ${CPU_SPLIT[gatectl]} ${CPU_SPLIT[proxyd]}"
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
  printf '[[ssh]]\nHost = "up"\nHostname = "%s"\nPort = 2222\n' $UP > /etc/gatectl/bottles/cold.toml
  local t i started tries
  local f files=(g-start g-stop s-start s-stop n-start n-stop g-banner n-banner s-banner s-tries g-late n-late s-late)
  for f in "${files[@]}"; do : > /tmp/$f; done
  for i in $(seq "$cycles"); do
    t=$(now_ns); gatectl start lat >/dev/null; ms_since "$t" >> /tmp/g-start
    t=$(now_ns); gatectl stop lat >/dev/null; ms_since "$t" >> /tmp/g-stop
    t=$(now_ns); "$here/shellgate" start lat 1 $UP 80; ms_since "$t" >> /tmp/s-start
    t=$(now_ns); "$here/shellgate" stop lat 1 $UP 80; ms_since "$t" >> /tmp/s-stop
    # the same with the forwarder started by start (forwarder_prestart),
    # not at the first connection
    echo "forwarder_prestart = true" > /etc/gatectl/gatectl.toml
    t=$(now_ns); gatectl start lat >/dev/null; ms_since "$t" >> /tmp/n-start
    t=$(now_ns); gatectl stop lat >/dev/null; ms_since "$t" >> /tmp/n-stop
    # cold gate to first SSH banner: start, then the first identification
    # line of the upstream's sshd through the gate
    t=$(now_ns); started=$(gatectl start cold); first_banner "$(gate_address "$started")" >/dev/null
    ms_since "$t" >> /tmp/n-banner
    gatectl stop cold >/dev/null
    late_banner n-late "$(gatectl start cold)"
    gatectl stop cold >/dev/null
    rm /etc/gatectl/gatectl.toml
    t=$(now_ns); started=$(gatectl start cold); first_banner "$(gate_address "$started")" >/dev/null
    ms_since "$t" >> /tmp/g-banner
    gatectl stop cold >/dev/null
    late_banner g-late "$(gatectl start cold)"
    gatectl stop cold >/dev/null
    # the script's socat may not listen yet when systemd-run returns: the
    # client tries again until the banner comes (the attempts are counted)
    t=$(now_ns); "$here/shellgate" start cold 2 $UP 2222; tries=$(first_banner 10.97.0.5)
    ms_since "$t" >> /tmp/s-banner; echo "$tries" >> /tmp/s-tries
    "$here/shellgate" stop cold 2 $UP 2222
    "$here/shellgate" start cold 2 $UP 2222; late_banner s-late "gate cold on 10.97.0.5 ports"
    "$here/shellgate" stop cold 2 $UP 2222
  done
  declare -gA LAT
  for f in "${files[@]}"; do
    LAT[$f,50]=$(pct 50 < /tmp/$f)
    LAT[$f,90]=$(pct 90 < /tmp/$f)
  done
  LAT[s-tries,max]=$(pct 100 < /tmp/s-tries)
  log "gatectl start p50 ${LAT[g-start,50]} ms, stop p50 ${LAT[g-stop,50]} ms; script start p50 ${LAT[s-start,50]} ms, stop p50 ${LAT[s-stop,50]} ms"
  log "start to first banner p50: gatectl ${LAT[g-banner,50]} ms (with prestart ${LAT[n-banner,50]} ms), script ${LAT[s-banner,50]} ms"
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
  addr=$(config_address lat)
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

start_never_idle() { # SLUG: starts the gate with forwarder_idle_secs = 0; the defaults stay for the others
  mkdir -p /etc/gatectl
  echo "forwarder_idle_secs = 0" > /etc/gatectl/gatectl.toml
  gatectl start "$1" >/dev/null
  rm /etc/gatectl/gatectl.toml
}

config_address() { # SLUG -> the address its ssh config points the agent at
  gatectl ssh-config "$1" | awk '/HostName/ {print $2}'
}

gate_address() { # "gate NAME running: N upstream(s) on ADDR ports ..." -> ADDR
  [[ $1 =~ \ on\ ([0-9.]+)\ ports ]] && echo "${BASH_REMATCH[1]}"
}

late_banner() { # FILE STARTED: an agent that connects 100 ms after its gate
  # started (as one started after its gate would): adds its wait for the
  # first banner to /tmp/FILE
  read -r -t 0.1 -u $nap_fd || true
  local t
  t=$(now_ns); first_banner "$(gate_address "$2")" >/dev/null; ms_since "$t" >> /tmp/$1
}

first_banner() { # ADDR: connects to ADDR:30000 until the SSH identification line
  # arrives (a refused connection is tried again after 1 ms); prints the
  # number of connection attempts
  local tries=0 line fd
  while (( tries < 5000 )); do
    tries=$((tries + 1))
    if exec {fd}<>"/dev/tcp/$1/30000"; then
      line=
      IFS= read -r -t 5 line <&$fd || true
      exec {fd}<&-
      if [[ $line == SSH-2.0-* ]]; then echo $tries; return 0; fi
    fi 2>/dev/null
    read -r -t 0.001 -u $nap_fd || true
  done
  echo "no SSH banner from $1:30000 after $tries attempts" >&2
  return 1
}

http_get() { # ADDR [SECS]: one HTTP request to ADDR:30000, waits for the reply (10 s at most)
  timeout "${2:-10}" bash -c 'exec 3<>"/dev/tcp/$1/30000"; printf "GET / HTTP/1.0\r\n\r\n" >&3; cat <&3 >/dev/null' _ "$1"
}

# --- scale ---------------------------------------------------------------------
# $scale gates, each with its own agent netns, started and stopped one after
# another; what an idle gate costs (snapshots at 0, each checkpoint and
# $scale gates); the host-wide commands with all of them up; and the same
# cost for $sg_scale gates of the shell script.
snapshot() { # LABEL: one line of what the host holds now
  local pid1_rss pid1_fds units netns avail slab percpu procs
  pid1_rss=$(awk '/^VmRSS/ {print $2}' /proc/1/status)
  pid1_fds=$(ls /proc/1/fd | wc -l)
  units=$(systemctl list-units --all --no-legend --plain | wc -l)
  netns=$(ip netns list | wc -l)
  avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
  percpu=$(awk '/^Percpu:/ {print $2}' /proc/meminfo)
  procs=$(ls -d /proc/[0-9]* | wc -l)
  echo "$1 $avail $slab $percpu $pid1_rss $pid1_fds $units $netns $procs"
}

# per-gate slope between two snapshot lines FROM TO N -> the cost columns
slope() {
  awk -v n="$3" 'NR == 1 {for (i = 2; i <= NF; i++) a[i] = $i} NR == 2 {
      printf "%.0f | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f\n",
        (a[2] - $2) / n, ($3 - a[3]) / n, ($4 - a[4]) / n, ($5 - a[5]) / n, ($6 - a[6]) / n, ($7 - a[7]) / n, ($9 - a[9]) / n }' \
    <(echo "$1"; echo "$2")
}

# p50 and p99 of lines FROM..TO of FILE -> "P50 P99"
window_pcts() { sed -n "$2,$3p" "$1" > /tmp/window; echo "$(pct 50 < /tmp/window) $(pct 99 < /tmp/window)"; }

scale() {
  local i t t1 window
  window=$(( scale >= 400 ? 100 : (scale + 3) / 4 ))
  declare -gA SCALE
  declare -ga SNAPS=()
  # a short idle period shows the forwarders gone again within the run
  local idle_secs=5
  echo "forwarder_idle_secs = $idle_secs" > /etc/gatectl/gatectl.toml
  SCALE[idle_secs]=$idle_secs
  log "creating $scale agent netns and manifests"
  SNAPS+=("$(snapshot 0-before-agents)")
  for i in $(seq 0 $((scale - 1))); do
    ip netns add agent-s$i
    printf 'agent_netns = "agent-s%s"\n[[ssh]]\nHost = "http"\nHostname = "%s"\nPort = 80\n' $i $UP > /etc/gatectl/bottles/s$i.toml
  done
  SNAPS+=("$(snapshot 0)")
  log "starting $scale gates one after another"
  : > /tmp/each-start
  t=$(now_ns)
  for i in $(seq 0 $((scale - 2))); do
    # where systemd (PID 1) spends its time during the last starts
    (( i == scale - window - 1 )) && pid1_profile_begin start
    t1=$(now_ns); gatectl start s$i >/dev/null; ms_since "$t1" >> /tmp/each-start
    # forwarder memory while few gates are up: with thousands, each cold
    # start takes seconds and the first forwarders would exit idle meanwhile
    (( i + 1 == (scale - 1 < 20 ? scale - 1 : 20) )) && forwarder_memory $((i + 1))
    for c in $checkpoints; do
      [[ $((i + 1)) == "$c" ]] || continue
      SNAPS+=("$(snapshot "$c")")
      cold_first "$c" "$i"
    done
  done
  pid1_profile_end
  # the last start, traced: where a start's time goes with many gates up
  t1=$(now_ns)
  strace -f -c -o /tmp/start-last.strace gatectl start s$((scale - 1)) >/dev/null
  SCALE[seq_start]=$(( $(ms_since "$t") - $(ms_since "$t1") ))
  SNAPS+=("$(snapshot "$scale")")
  cold_first "$scale" $((scale - 1))
  read -r SCALE[first50] SCALE[first99] <<<"$(window_pcts /tmp/each-start 1 $window)"
  read -r SCALE[last50] SCALE[last99] <<<"$(window_pcts /tmp/each-start $((scale - window)) $((scale - 1)))"
  log "$scale sequential starts: ${SCALE[seq_start]} ms; first $window p50/p99 ${SCALE[first50]}/${SCALE[first99]} ms, last ${SCALE[last50]}/${SCALE[last99]} ms"

  # a gate with no connection yet has no forwarder process: only its socket
  # unit, whose sockets systemd holds
  running_forwarders() { systemctl list-units --plain --no-legend --state=running 'gate-s*.service' | wc -l; }
  SCALE[started_forwarders]=$(running_forwarders)
  # an idle gate costs no process: with no connection, each forwarder has
  # exited once forwarder_idle_secs passed since its start
  sleep $((idle_secs + 2))
  SCALE[idle_forwarders]=$(running_forwarders)
  host_wide_commands
  log "list ${SCALE[cmd,list]} ms, status ${SCALE[cmd,status]} ms, check ${SCALE[cmd,check]} ms, prune ${SCALE[cmd,prune]} ms, reconcile ${SCALE[cmd,reconcile]} ms, after a flush ${SCALE[cmd,flush]} ms"

  log "stopping $scale gates one after another"
  : > /tmp/each-stop
  t=$(now_ns)
  for i in $(seq 0 $((scale - 1))); do
    t1=$(now_ns); gatectl stop s$i >/dev/null; ms_since "$t1" >> /tmp/each-stop
  done
  SCALE[seq_stop]=$(ms_since "$t")
  # the first stops run with all gates up, the last ones with few
  read -r SCALE[stopfirst50] SCALE[stopfirst99] <<<"$(window_pcts /tmp/each-stop 1 $window)"
  read -r SCALE[stoplast50] SCALE[stoplast99] <<<"$(window_pcts /tmp/each-stop $((scale - window + 1)) $scale)"
  SCALE[window]=$window
  log "starting $scale gates 8 at a time"
  t=$(now_ns)
  seq 0 $((scale - 1)) | sed 's/^/s/' | xargs -P 8 -n 1 gatectl start >/dev/null
  SCALE[par_start]=$(ms_since "$t")
  SCALE[par_n]=$(gatectl list | grep -c running || true)
  t=$(now_ns)
  seq 0 $((scale - 1)) | sed 's/^/s/' | xargs -P 8 -n 1 gatectl stop >/dev/null
  SCALE[par_stop]=$(ms_since "$t")
  log "parallel start ${SCALE[par_start]} ms (${SCALE[par_n]} running), stop ${SCALE[par_stop]} ms"
  for i in $(seq 0 $((scale - 1))); do ip netns del agent-s$i; done

  # the shell script's gates, for the per-gate cost
  SG_SNAPS=("$(snapshot 0)")
  for i in $(seq 1 "$sg_scale"); do "$here/shellgate" start sg$i $((i + 10)) $UP 80; done
  sleep 1 # systemd-run returns before socat runs
  SG_SNAPS+=("$(snapshot "$sg_scale")")
  for i in $(seq 1 "$sg_scale"); do "$here/shellgate" stop sg$i $((i + 10)) $UP 80; done
}

forwarder_memory() { # memory of idle forwarders and of one with 10 sessions, with few gates up
  # memory of idle forwarders: started by one request each, then idle
  : > /tmp/mem-idle; : > /tmp/rss-idle
  local sample=$1 a i
  # each read a second after its request, well within the idle period
  # (with thousands of agent netns up, a cold start takes a second or more)
  for i in $(seq 0 $((sample - 1))); do
    a=$(config_address s$i)
    ip netns exec agent-s$i bash -c "$(declare -f http_get); http_get $a 150"
    sleep 1
    unit_memory gate-s$i.service >> /tmp/mem-idle
    unit_rss gate-s$i.service >> /tmp/rss-idle
  done
  SCALE[mem_idle]=$(pct 50 < /tmp/mem-idle)
  SCALE[rss_idle]=$(pct 50 < /tmp/rss-idle)
  # 10 open sessions (HTTP keep-alive, one request each) through gate s1
  local addr
  addr=$(config_address s1)
  ip netns exec agent-s1 bash -c "$(declare -f sessions); sessions $addr 10" &
  local holder=$!
  sleep 3 # the forwarder may have to start again first
  SCALE[mem_10]=$(unit_memory gate-s1.service)
  SCALE[rss_10]=$(unit_rss gate-s1.service)
  kill $holder 2>/dev/null; wait $holder 2>/dev/null || true
}

declare -a COLD=()
cold_first() { # GATES INDEX: the first request through gate sINDEX, whose forwarder is not running yet
  local a t ms
  a=$(config_address s$2)
  t=$(now_ns)
  if ip netns exec agent-s$2 bash -c "$(declare -f http_get); http_get $a 150"; then
    ms=$(ms_since "$t")
  else
    ms="no answer within 150 s"
  fi
  COLD+=("$1 $(ip netns list | wc -l) $(wc -l < /proc/self/mountinfo) $ms")
  log "first request through a new gate with $1 gates up: $ms ms"
}

host_wide_commands() { # each host-wide command with all gates up, median of $lists runs
  local c name t
  for c in list "status --json" check "prune --dry-run" reconcile flush; do
    name=${c%% *}
    : > /tmp/cmd-$name
    for _ in $(seq $lists); do
      if [[ $c == flush ]]; then
        nft flush ruleset
        t=$(now_ns); gatectl reconcile --quiet; ms_since "$t" >> /tmp/cmd-$name
      else
        t=$(now_ns); gatectl $c >/dev/null 2>&1 || true; ms_since "$t" >> /tmp/cmd-$name
      fi
    done
    SCALE[cmd,$name]=$(pct 50 < /tmp/cmd-$name)
  done
  SCALE[list_n]=$(gatectl list | grep -c running || true)
  # the forwarding state must be whole again after the flushes
  gatectl check > /tmp/check-after-flush 2>&1 || log "check after the flushes: $(grep -v '^ok' /tmp/check-after-flush | head -3)"
  # where check's time goes at this scale: its own system calls, and systemd
  strace -f -c -o /tmp/check.strace gatectl check >/dev/null 2>&1 || true
  pid1_profile_begin check
  gatectl check >/dev/null 2>&1 || true
  pid1_profile_end
}

PID1_PERF=
pid1_profile_begin() { # NAME: samples systemd (PID 1) until pid1_profile_end
  command -v perf >/dev/null || return 0
  perf record -q -g -p 1 -o "/tmp/pid1-$1.data" 2>/dev/null &
  PID1_PERF="$! $1"
  sleep 0.2
}

pid1_profile_end() { # writes the top symbols to /tmp/pid1-NAME.top
  [[ -n $PID1_PERF ]] || return 0
  local pid name
  read -r pid name <<<"$PID1_PERF"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  PID1_PERF=
  perf report -i "/tmp/pid1-$name.data" --no-children --sort dso,sym -g none 2>/dev/null |
    grep '%' | head -n 10 | cut -c1-110 > "/tmp/pid1-$name.top" || true
  perf report -i "/tmp/pid1-$name.data" --stdio --header-only 2>/dev/null |
    awk '/sample duration/ {print}' >> "/tmp/pid1-$name.top" || true
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
    echo "| gatectl start, forwarder_prestart = true | ${LAT[n-start,50]} | ${LAT[n-start,90]} | $(ratio "${LAT[s-start,50]}" "${LAT[n-start,50]}") |"
    echo "| gatectl stop, forwarder_prestart = true | ${LAT[n-stop,50]} | ${LAT[n-stop,90]} | $(ratio "${LAT[s-stop,50]}" "${LAT[n-stop,50]}") |"
    echo
    echo "### Cold gate to first SSH banner ($cycles cycles)"
    echo
    echo "From the beginning of the start until the upstream sshd's identification line arrives through the new gate."
    echo
    echo "| | p50 ms | p90 ms | script p50 ÷ p50 |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| gatectl start to first banner | ${LAT[g-banner,50]} | ${LAT[g-banner,90]} | $(ratio "${LAT[s-banner,50]}" "${LAT[g-banner,50]}") |"
    echo "| gatectl start to first banner, forwarder_prestart = true | ${LAT[n-banner,50]} | ${LAT[n-banner,90]} | $(ratio "${LAT[s-banner,50]}" "${LAT[n-banner,50]}") |"
    echo "| shell script start to first banner (connection attempts: p50 ${LAT[s-tries,50]}, max ${LAT[s-tries,max]}) | ${LAT[s-banner,50]} | ${LAT[s-banner,90]} | |"
    echo "| agent connecting 100 ms after gatectl start: its wait for the banner | ${LAT[g-late,50]} | ${LAT[g-late,90]} | $(ratio "${LAT[s-late,50]}" "${LAT[g-late,50]}") |"
    echo "| the same, forwarder_prestart = true | ${LAT[n-late,50]} | ${LAT[n-late,90]} | $(ratio "${LAT[s-late,50]}" "${LAT[n-late,50]}") |"
    echo "| the same through the shell script's gate | ${LAT[s-late,50]} | ${LAT[s-late,90]} | |"
    echo
    echo "### Scale ($scale gates, each with its own agent netns)"
    echo
    echo "| | value |"
    echo "| --- | ---: |"
    echo "| start $scale gates one after another | ${SCALE[seq_start]} ms (the last one, run under strace, not counted) |"
    echo "| one start, p50 / p99 of the first ${SCALE[window]} | ${SCALE[first50]} ms / ${SCALE[first99]} ms |"
    echo "| one start, p50 / p99 of the last ${SCALE[window]} (÷ first) | ${SCALE[last50]} ms / ${SCALE[last99]} ms ($(ratio "${SCALE[last50]}" "${SCALE[first50]}") / $(ratio "${SCALE[last99]}" "${SCALE[first99]}")) |"
    echo "| stop them one after another | ${SCALE[seq_stop]} ms |"
    echo "| one stop, p50 / p99 of the first ${SCALE[window]} ($scale gates up) | ${SCALE[stopfirst50]} ms / ${SCALE[stopfirst99]} ms |"
    echo "| one stop, p50 / p99 of the last ${SCALE[window]} (few gates up; first ÷ last) | ${SCALE[stoplast50]} ms / ${SCALE[stoplast99]} ms ($(ratio "${SCALE[stopfirst50]}" "${SCALE[stoplast50]}") / $(ratio "${SCALE[stopfirst99]}" "${SCALE[stoplast99]}")) |"
    echo "| start $scale gates 8 at a time | ${SCALE[par_start]} ms (${SCALE[par_n]} running) |"
    echo "| stop them 8 at a time | ${SCALE[par_stop]} ms |"
    echo "| forwarders running right after the last start, before any connection | ${SCALE[started_forwarders]} |"
    echo "| forwarders running with no connection, $((SCALE[idle_secs] + 2)) s after the last start (forwarder_idle_secs = ${SCALE[idle_secs]}; $scale gates up) | ${SCALE[idle_forwarders]} |"
    echo "| idle forwarder after one request, MemoryCurrent (median of $(wc -l < /tmp/mem-idle)) | ${SCALE[mem_idle]} KiB |"
    echo "| idle forwarder after one request, VmRSS (median) | ${SCALE[rss_idle]} KiB |"
    echo "| forwarder with 10 open sessions, MemoryCurrent | ${SCALE[mem_10]} KiB |"
    echo "| forwarder with 10 open sessions, VmRSS | ${SCALE[rss_10]} KiB |"
    echo
    echo "### First request through a gate whose forwarder is not running, as gates are added"
    echo
    echo "systemd sets the forwarder's sandbox up at its first connection; its mount namespace holds every named network namespace (a mount under /run/netns), gatectl's and the agents'."
    echo
    echo "| gates up | named netns | mounts | first request ms |"
    echo "| ---: | ---: | ---: | ---: |"
    local cold
    for cold in "${COLD[@]}"; do
      echo "$cold" | awk '{printf "| %s | %s | %s | ", $1, $2, $3; for (i = 4; i <= NF; i++) printf "%s%s", $i, (i < NF ? " " : ""); print " |"}'
    done
    echo
    echo "### Host-wide commands with ${SCALE[list_n]} gates running (median of $lists runs)"
    echo
    echo "| command | ms |"
    echo "| --- | ---: |"
    echo "| \`gatectl list\` | ${SCALE[cmd,list]} |"
    echo "| \`gatectl status --json\` | ${SCALE[cmd,status]} |"
    echo "| \`gatectl check\` | ${SCALE[cmd,check]} |"
    echo "| \`gatectl prune --dry-run\` | ${SCALE[cmd,prune]} |"
    echo "| \`gatectl reconcile\` | ${SCALE[cmd,reconcile]} |"
    echo "| \`gatectl reconcile\` right after \`nft flush ruleset\` | ${SCALE[cmd,flush]} |"
    echo
    echo "\`gatectl check\` at this scale (strace -f -c, top 8 by time):"
    echo
    echo '```'
    head -n 12 /tmp/check.strace 2>/dev/null || echo "(strace unavailable)"
    echo '```'
    echo
    echo "systemd (PID 1) while \`gatectl check\` runs at this scale (perf record -g -p 1, top symbols by own samples):"
    echo
    echo '```'
    cat /tmp/pid1-check.top 2>/dev/null || echo "(perf unavailable)"
    echo '```'
    echo
    echo "systemd (PID 1) during the last ${SCALE[window]} starts (perf record -g -p 1, top symbols by own samples):"
    echo
    echo '```'
    cat /tmp/pid1-start.top 2>/dev/null || echo "(perf unavailable)"
    echo '```'
    echo
    echo "### What an idle gate costs (snapshots of the throwaway host)"
    echo
    echo "Columns: MemAvailable, Slab and Percpu from /proc/meminfo (KiB), systemd's (PID 1) VmRSS (KiB) and open fds, loaded units, network namespaces, processes."
    echo
    echo "| gates up | MemAvailable | Slab | Percpu | PID 1 RSS | PID 1 fds | units | netns | processes |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    local snap
    for snap in "${SNAPS[@]}"; do
      echo "$snap" | awk '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}'
    done
    echo
    echo "Per gate (slope from 0 to the last snapshot; the agent netns the bench creates for each gate are in the 0 row already):"
    echo
    echo "| | MemAvailable drop KiB | Slab KiB | Percpu KiB | PID 1 RSS KiB | PID 1 fds | units | processes |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    echo "| gatectl ($scale gates) | $(slope "${SNAPS[1]}" "${SNAPS[-1]}" "$scale") |"
    echo "| shell script ($sg_scale gates, socat included) | $(slope "${SG_SNAPS[0]}" "${SG_SNAPS[1]}" "$sg_scale") |"
    echo "| an agent netns alone ($scale, created by the bench) | $(slope "${SNAPS[0]}" "${SNAPS[1]}" "$scale") |"
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
    echo "### CPU per request while \`ab -c 32\` runs (${ab_secs} s, each process's utime and stime)"
    echo
    echo "Microseconds of CPU per request: the relay (the gate's forwarder, or proxyd) in user space and in the kernel, journald, nginx, and the whole machine (both CPUs, ab and the kernel's softirq work included). \`perf record -a\` on this kind of VM gives nearly every sample to the idle task, so the split is read from /proc."
    echo
    echo "| path | req/s | relay user | relay kernel | journald | nginx | all CPUs |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    echo "${CPU_SPLIT[gatectl]}"
    echo "${CPU_SPLIT[proxyd]}"
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
cpu_per_request
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
