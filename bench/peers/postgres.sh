#!/usr/bin/env bash
# A copy of the PostgreSQL peer harness (shared/peers/postgres/run.sh of the steering repository, 2026-12-02),
# so that bench/compare.py runs from a plain clone; compare.py prefers ../shared/peers/postgres/run.sh when it exists.
# PostgreSQL 15 peer baseline for the "transfers" ledger workload.
#
# Sets everything up from nothing under $BASE (default /tmp/peer-pg), runs
#   F. pg_test_fsync -s 2                         (disk fdatasync latency)
#   A. single node, 1 transfer per transaction     C = 1, 16, 64
#        A-stmt: BEGIN; INSERT; UPDATE; UPDATE; COMMIT   (5 round trips)
#        A-fn  : SELECT transfer(...)  plpgsql, 1 round trip
#   B. single node, 100 transfers per transaction  C = 16
#        B-set : set-based (1 INSERT of 100 rows + 1 UPDATE of netted deltas)
#        B-loop: plpgsql loop, per-transfer balance check (sequential semantics)
#   C. primary + 2 streaming standbys on loopback, synchronous_commit=on,
#      synchronous_standby_names='ANY 1 (s1, s2)'; A at C=16,64 and B at C=16
# prints a results table and tears down (servers stopped, data dirs removed;
# $BASE/results.txt and the raw pgbench outputs are kept; KEEP=1 keeps all).
#
# Every timed measurement runs under `flock /tmp/bench.lock`.
# Env knobs: BASE, DUR (s, default 20), P0 (first port, default 55432), LOCK,
#            QUIET_MAX (s to wait for an idle machine before a run, default 30),
#            SKIP_FSYNC=1, SKIP_REPL=1.
set -euo pipefail

SELF=$(readlink -f "$0")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
if [ ! -x "$PGBIN/pgbench" ]; then  # Debian 12's postgresql is 15
  apt-get update -qq >/dev/null && apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi
BASE=${BASE:-/tmp/peer-pg}
DUR=${DUR:-20}
LOCK=${LOCK:-/tmp/bench.lock}
QUIET_MAX=${QUIET_MAX:-30}
P0=${P0:-55432}; P1=$((P0 + 1)); P2=$((P0 + 2))
NACC=100000
INIT_BAL=1000000
BATCH=100
NCPU=$(nproc)
HZ=$(getconf CLK_TCK)

as_pg() { runuser -u postgres -- "$@"; }
q() {  # q PORT SQL...  (psql, unaligned, tuples only)
  local port=$1; shift
  "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench "$@"
}

# ---------------------------------------------------------------- CPU probes
cpu_stat() {  # "busy total" jiffies over all CPUs
  awk '/^cpu /{t=$2+$3+$4+$5+$6+$7+$8+$9; print t-$5-$6, t; exit}' /proc/stat
}
pm_pids() {  # postmaster PIDs of our running clusters
  local d
  for d in "$BASE"/n0 "$BASE"/s1 "$BASE"/s2; do
    if [ -f "$d/postmaster.pid" ]; then head -1 "$d/postmaster.pid"; fi
  done | tr '\n' ' '
}
pg_ticks() {  # CPU jiffies of our postmasters + live children + reaped children
  local pids; pids=$(pm_pids)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pids="$pids" '
    BEGIN { n = split(pids, a, " "); for (i = 1; i <= n; i++) pm[a[i]] = 1 }
    { pid = $1; line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ")
      if ((pid in pm) || (f[2] in pm)) s += f[12] + f[13] + f[14] + f[15] }
    END { print s + 0 }'
}
wait_quiet() {  # wait (<= QUIET_MAX s) until machine busy < 25% of one core
  local i=0 a b busy=0
  while [ "$i" -lt "$QUIET_MAX" ]; do
    a=$(cpu_stat); sleep 1; b=$(cpu_stat)
    busy=$(awk -v a="$a" -v b="$b" -v n="$NCPU" 'BEGIN{split(a,x," ");split(b,y," ");
           dt=y[2]-x[2]; print (dt>0) ? int(100*n*(y[1]-x[1])/dt) : 0}')
    i=$((i + 1))
    [ "$busy" -lt 25 ] && break
  done
  echo "busy_before=${busy}% waited=${i}s"
}

# ------------------------------------------------- measurement (under flock)
if [ "${1:-}" = "--measure" ]; then
  out=$2; c=$3; script=$4; j=$(( c < 2 ? c : 2 ))
  date +%s.%N > "$out/tlock"
  wait_quiet > "$out/quiet"
  cpu_stat > "$out/cpu0"; pg_ticks > "$out/pg0"
  rc=0
  /usr/bin/time -f '%U %S %e' -o "$out/time" \
    "$PGBIN/pgbench" -h 127.0.0.1 -p "$P0" -U postgres -n -M prepared \
      -f "$script" -c "$c" -j "$j" -T "$DUR" -D n=0 --max-tries=10 \
      -l --log-prefix="$out/log" bench > "$out/pgbench.out" 2>&1 || rc=$?
  sleep 0.5   # let backends exit and be reaped into the postmaster's cutime
  cpu_stat > "$out/cpu1"; pg_ticks > "$out/pg1"
  echo "$rc" > "$out/rc"
  exit 0
fi
if [ "${1:-}" = "--fsync" ]; then
  date +%s.%N > "$2/tlock"
  wait_quiet > "$2/quiet"
  "$PGBIN/pg_test_fsync" -s 2 -f "$BASE/fsync.tmp" > "$2/pg_test_fsync.out" 2>&1
  rm -f "$BASE/fsync.tmp"
  exit 0
fi

# flock wrapper that accounts the time spent waiting for other benchmarks
LOCKWAIT=0
locked() {  # locked OUTDIR CMD...   (CMD writes OUTDIR/tlock once it holds the lock)
  local out=$1 t0; shift
  t0=$(date +%s.%N)
  flock "$LOCK" "$@"
  LOCKWAIT=$(awk -v a="$t0" -v b="$(cat "$out/tlock")" -v w="$LOCKWAIT" 'BEGIN { printf "%.0f", w + b - a }')
}

# ----------------------------------------------------------- setup/teardown
stop_all() {
  local d
  for d in "$BASE"/n0 "$BASE"/s1 "$BASE"/s2; do
    if [ -f "$d/postmaster.pid" ]; then
      as_pg "$PGBIN/pg_ctl" -D "$d" stop -m fast -w -t 60 > /dev/null 2>&1 || true
    fi
  done
}
teardown() {
  stop_all
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$BASE"/n0 "$BASE"/s1 "$BASE"/s2 "$BASE"/sock "$BASE"/fsync.tmp
    rm -f "$BASE"/runs/*/log.*
  fi
}

write_conf() {  # write_conf DATADIR PORT
  cat >> "$1/postgresql.conf" <<EOF

# ---- peer benchmark settings ----
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$BASE/sock'
max_connections = 200
shared_buffers = 1GB
wal_buffers = 16MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
checkpoint_completion_target = 0.9
fsync = on
synchronous_commit = on
full_page_writes = on
wal_sync_method = fdatasync
wal_level = replica
max_wal_senders = 10
hot_standby = on
jit = off
log_checkpoints = on
EOF
}

setup_primary() {
  as_pg "$PGBIN/initdb" -D "$BASE/n0" -U postgres --auth=trust -E UTF8 --no-locale > "$BASE/initdb.log" 2>&1
  write_conf "$BASE/n0" "$P0"
  as_pg "$PGBIN/pg_ctl" -D "$BASE/n0" -l "$BASE/n0.log" -w start > /dev/null
  "$PGBIN/createdb" -h 127.0.0.1 -p "$P0" -U postgres bench
  q "$P0" <<'EOF'
CREATE TABLE accounts (
  id      bigint PRIMARY KEY,
  balance bigint NOT NULL CHECK (balance >= 0)
) WITH (fillfactor = 80);
CREATE TABLE transfers (
  id     bigint PRIMARY KEY,           -- client-chosen idempotency key
  debit  bigint NOT NULL,
  credit bigint NOT NULL,
  amount bigint NOT NULL,
  ts     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accounts SELECT g, 1000000 FROM generate_series(1, 100000) g;

-- A-fn: one transfer, one round trip. Rows locked in id order (no deadlocks);
-- CHECK (balance >= 0) aborts the transaction on overdraft.
CREATE FUNCTION transfer(p_id bigint, p_debit bigint, p_credit bigint, p_amount bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO transfers (id, debit, credit, amount) VALUES (p_id, p_debit, p_credit, p_amount);
  IF p_debit < p_credit THEN
    UPDATE accounts SET balance = balance - p_amount WHERE id = p_debit;
    IF NOT FOUND THEN RAISE EXCEPTION 'no account %', p_debit; END IF;
    UPDATE accounts SET balance = balance + p_amount WHERE id = p_credit;
    IF NOT FOUND THEN RAISE EXCEPTION 'no account %', p_credit; END IF;
  ELSE
    UPDATE accounts SET balance = balance + p_amount WHERE id = p_credit;
    IF NOT FOUND THEN RAISE EXCEPTION 'no account %', p_credit; END IF;
    UPDATE accounts SET balance = balance - p_amount WHERE id = p_debit;
    IF NOT FOUND THEN RAISE EXCEPTION 'no account %', p_debit; END IF;
  END IF;
END $$;

-- Batches: p_packed[k] = (debit * 1e6 + credit) * 1e3 + amount (pgbench allows
-- at most 255 parameters per statement, so 100 ids + 100 packed values).
CREATE FUNCTION lock_accounts(p_packed bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE accts bigint[]; n int;
BEGIN
  accts := ARRAY(SELECT p / 1000000000 FROM unnest(p_packed) p
                 UNION SELECT (p / 1000) % 1000000 FROM unnest(p_packed) p);
  PERFORM 1 FROM accounts WHERE id = ANY (accts) ORDER BY id FOR UPDATE;  -- id order: no deadlocks
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n <> cardinality(accts) THEN RAISE EXCEPTION 'unknown account in batch'; END IF;
END $$;

-- B-set: one multi-row INSERT + one UPDATE of per-account net deltas;
-- CHECK (balance >= 0) is enforced on each account's post-batch balance and an
-- overdraft (or a duplicate id) rolls back the whole batch.
CREATE FUNCTION transfer_batch_set(p_ids bigint[], p_packed bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lock_accounts(p_packed);
  INSERT INTO transfers (id, debit, credit, amount)
    SELECT i, p / 1000000000, (p / 1000) % 1000000, p % 1000
      FROM unnest(p_ids, p_packed) AS u(i, p);
  UPDATE accounts a SET balance = a.balance + d.delta
    FROM (SELECT acct, sum(delta)::bigint AS delta
            FROM (SELECT p / 1000000000 AS acct, -(p % 1000) AS delta FROM unnest(p_packed) p
                  UNION ALL
                  SELECT (p / 1000) % 1000000, p % 1000 FROM unnest(p_packed) p) x
           GROUP BY acct) d
   WHERE a.id = d.acct;
END $$;

-- B-loop: transfers applied one by one in order; a transfer that would
-- overdraw its debit account is rejected individually (returned count).
CREATE FUNCTION transfer_batch_loop(p_ids bigint[], p_packed bigint[])
RETURNS int LANGUAGE plpgsql AS $$
DECLARE k int; d bigint; c bigint; a bigint; rejected int := 0;
BEGIN
  PERFORM lock_accounts(p_packed);
  FOR k IN 1 .. cardinality(p_ids) LOOP
    d := p_packed[k] / 1000000000; c := (p_packed[k] / 1000) % 1000000; a := p_packed[k] % 1000;
    UPDATE accounts SET balance = balance - a WHERE id = d AND balance >= a;
    IF NOT FOUND THEN rejected := rejected + 1; CONTINUE; END IF;
    UPDATE accounts SET balance = balance + a WHERE id = c;
    INSERT INTO transfers (id, debit, credit, amount) VALUES (p_ids[k], d, c, a);
  END LOOP;
  RETURN rejected;
END $$;
VACUUM ANALYZE;
CHECKPOINT;
EOF
}

write_scripts() {
  local S=$BASE/scripts k
  mkdir -p "$S"
  # shared prologue: per-client counter n (-D n=0) => unique id client_id*1e10 + n
  local pro='\set n :n + 1
\set tid :client_id * 10000000000 + :n
\set debit random(1, 100000)
\set credit 1 + (:debit + random(0, 99998)) % 100000
\set amount random(1, 100)'
  cat > "$S/a_stmt.sql" <<EOF
$pro
\set lo least(:debit, :credit)
\set hi greatest(:debit, :credit)
\set dlo CASE WHEN :debit < :credit THEN -:amount ELSE :amount END
\set dhi -:dlo
BEGIN;
INSERT INTO transfers (id, debit, credit, amount) VALUES (:tid, :debit, :credit, :amount);
UPDATE accounts SET balance = balance + :dlo WHERE id = :lo;
UPDATE accounts SET balance = balance + :dhi WHERE id = :hi;
COMMIT;
EOF
  cat > "$S/a_fn.sql" <<EOF
$pro
SELECT transfer(:tid, :debit, :credit, :amount);
EOF
  local body ids=() ps=()
  body=$'\\set n :n + 1\n\\set b :client_id * 10000000000 + :n * 100\n'
  for k in $(seq 1 "$BATCH"); do
    body+="\\set i$k :b + $k"$'\n'
    body+='\set d random(1, 100000)'$'\n'
    body+="\\set p$k (:d * 1000000 + 1 + (:d + random(0, 99998)) % 100000) * 1000 + random(1, 100)"$'\n'
    ids+=(":i$k"); ps+=(":p$k")
  done
  local IFS=,
  printf '%sSELECT transfer_batch_set(ARRAY[%s]::bigint[], ARRAY[%s]::bigint[]);\n' \
    "$body" "${ids[*]}" "${ps[*]}" > "$S/b_set.sql"
  printf '%sSELECT transfer_batch_loop(ARRAY[%s]::bigint[], ARRAY[%s]::bigint[]);\n' \
    "$body" "${ids[*]}" "${ps[*]}" > "$S/b_loop.sql"
}

setup_standbys() {
  local s port
  for s in s1 s2; do
    port=$P1; [ "$s" = s2 ] && port=$P2
    as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P0" -U postgres -D "$BASE/$s" \
      -R -X stream -c fast > "$BASE/$s.basebackup.log" 2>&1
    cat >> "$BASE/$s/postgresql.auto.conf" <<EOF
primary_conninfo = 'host=127.0.0.1 port=$P0 user=postgres application_name=$s'
port = $port
EOF
    as_pg "$PGBIN/pg_ctl" -D "$BASE/$s" -l "$BASE/$s.log" -w start > /dev/null
  done
  q "$P0" -c "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1, s2)'" -c "SELECT pg_reload_conf()" > /dev/null
  local i st=""
  for i in $(seq 1 60); do
    st=$(q "$P0" -c "SELECT string_agg(application_name||':'||state||':'||sync_state, ' ' ORDER BY 1) FROM pg_stat_replication")
    [ "$st" = "s1:streaming:quorum s2:streaming:quorum" ] && break
    sleep 1
  done
  echo "replication: $st" >&2
  [ "$st" = "s1:streaming:quorum s2:streaming:quorum" ]
}

wait_catchup() {
  local i
  for i in $(seq 1 120); do
    [ "$(q "$P0" -c "SELECT count(*) FILTER (WHERE replay_lsn >= pg_current_wal_flush_lsn()) FROM pg_stat_replication")" = 2 ] && return 0
    sleep 0.5
  done
  echo "standbys did not catch up" >&2; return 1
}

# ------------------------------------------------------------------ one case
RESULTS=$BASE/results.tsv
run_case() {  # run_case NAME NODES CLIENTS SCRIPT BATCHSIZE
  local name=$1 nodes=$2 c=$3 script=$BASE/scripts/$4 batch=$5
  local out=$BASE/runs/${name}_n${nodes}_c$c
  mkdir -p "$out"
  # reset: empty transfers (ids restart per run), vacuum, checkpoint everywhere
  q "$P0" -c "TRUNCATE transfers" -c "VACUUM ANALYZE accounts" -c "VACUUM ANALYZE transfers" -c "CHECKPOINT" > /dev/null
  if [ "$nodes" = 3 ]; then wait_catchup; q "$P1" -c CHECKPOINT; q "$P2" -c CHECKPOINT; fi
  echo "[$(date +%T)] $name nodes=$nodes C=$c ..." >&2
  locked "$out" "$SELF" --measure "$out" "$c" "$script"
  # correctness checks
  local rows sum minb chk=ok extra=""
  read -r rows sum minb < <(q "$P0" -F ' ' -c "SELECT (SELECT count(*) FROM transfers), sum(balance), min(balance) FROM accounts")
  [ "$sum" = $((NACC * INIT_BAL)) ] || chk="SUM!"
  [ "$minb" -ge 0 ] || chk="NEG!"
  if [ "$nodes" = 3 ]; then
    wait_catchup
    [ "$(q "$P1" -c "SELECT count(*) FROM transfers")" = "$rows" ] || chk="${chk},s1!"
    [ "$(q "$P2" -c "SELECT count(*) FROM transfers")" = "$rows" ] || chk="${chk},s2!"
  fi
  # parse
  local f=$out/pgbench.out tps lat proc failed retried
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$f")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$f")
  proc=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$f")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$f")
  retried=$(sed -n 's/^number of transactions retried: \([0-9]*\).*/\1/p' "$f")
  [ "$(cat "$out/rc")" = 0 ] && [ -n "$tps" ] || { chk="pgbench-rc=$(cat "$out/rc")"; tps=${tps:-0}; lat=${lat:-0}; proc=${proc:-0}; }
  [ "$rows" = $((proc * batch)) ] || chk="${chk},rows=$rows/$((proc * batch))"
  local pct
  pct=$(cat "$out"/log.* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n | awk '
        { v[NR] = $1 } END { if (NR == 0) { print "- - - -"; exit }
          split("0.50 0.95 0.99", q, " "); s = ""
          for (i = 1; i <= 3; i++) { k = int(q[i] * NR); if (k < q[i] * NR) k++; if (k < 1) k = 1; s = s sprintf("%.2f ", v[k] / 1000) }
          printf "%s%.1f\n", s, v[NR] / 1000 }')
  local cpu
  cpu=$(awk -v c0="$(cat "$out/cpu0")" -v c1="$(cat "$out/cpu1")" -v g0="$(cat "$out/pg0")" -v g1="$(cat "$out/pg1")" \
            -v tm="$(tail -1 "$out/time")" -v hz="$HZ" -v n="$NCPU" 'BEGIN {
      split(c0, a, " "); split(c1, b, " "); split(tm, t, " ")
      wall = (b[2] - a[2]) / n / hz                       # seconds
      busy = 100 * (b[1] - a[1]) / hz / wall
      pg   = 100 * (g1 - g0) / hz / wall
      pb   = 100 * (t[1] + t[2]) / wall
      printf "%.0f %.0f %.0f %.0f", busy, pg, pb, busy - pg - pb }')
  printf '%s\t%s\t%s\t%.0f\t%.0f\t%.2f\t%s\t%s\t%s\t%s\t%s\n' \
    "$name" "$nodes" "$c" "$tps" "$(awk -v t="$tps" -v b="$batch" 'BEGIN{print t*b}')" "$lat" \
    "$(echo "$pct" | tr ' ' '\t')" "${failed:-0}/${retried:-0}" "$(echo "$cpu" | tr ' ' '\t')" "$chk" \
    "$(sed 's/ /,/g' "$out/quiet")" >> "$RESULTS"
}

print_table() {
  {
    printf '%-7s %5s %3s %8s %11s %8s %7s %7s %7s %8s %9s %6s %8s %6s %6s %-4s %s\n' \
      case nodes C txn/s transfers/s lat_avg p50 p95 p99 max fail/rtry busy% pg% pgbench% other% check pre-run
    awk -F '\t' '{ printf "%-7s %5s %3s %8s %11s %8s %7s %7s %7s %8s %9s %6s %8s %6s %6s %-4s %s\n",
                   $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17 }' "$RESULTS"
    echo "(latencies in ms; CPU in % of one core, machine has $NCPU cores; busy% = whole machine;"
    echo " other% = busy - postgres - pgbench, i.e. kernel/other processes; duration ${DUR}s per run)"
  } | tee "$BASE/results.txt"
}

# ---------------------------------------------------------------------- main
main() {
  local t0=$SECONDS
  # clean up anything left from a previous run of this script
  stop_all
  rm -rf "$BASE"
  mkdir -p "$BASE/sock" "$BASE/runs"
  chown -R postgres: "$BASE"
  trap teardown EXIT

  echo "PostgreSQL: $("$PGBIN/postgres" --version); $(nproc) CPUs; $(date -Is)" | tee "$BASE/header.txt"
  if [ "${SKIP_FSYNC:-0}" != 1 ]; then
    mkdir -p "$BASE/runs/fsync"; chown postgres: "$BASE/runs/fsync"
    echo "[$(date +%T)] pg_test_fsync ..." >&2
    locked "$BASE/runs/fsync" "$SELF" --fsync "$BASE/runs/fsync"
  fi
  setup_primary
  write_scripts
  : > "$RESULTS"
  local c
  for c in 1 16 64; do run_case A-stmt 1 "$c" a_stmt.sql 1; done
  for c in 1 16 64; do run_case A-fn 1 "$c" a_fn.sql 1; done
  run_case B-set 1 16 b_set.sql "$BATCH"
  run_case B-loop 1 16 b_loop.sql "$BATCH"
  if [ "${SKIP_REPL:-0}" != 1 ]; then
    setup_standbys
    for c in 16 64; do run_case A-stmt 3 "$c" a_stmt.sql 1; done
    for c in 16 64; do run_case A-fn 3 "$c" a_fn.sql 1; done
    run_case B-set 3 16 b_set.sql "$BATCH"
    run_case B-loop 3 16 b_loop.sql "$BATCH"
  fi
  echo
  cat "$BASE/header.txt"
  if [ -f "$BASE/runs/fsync/pg_test_fsync.out" ]; then
    echo "pg_test_fsync -s 2 ($(cat "$BASE/runs/fsync/quiet")):"
    awk '/using one 8kB write/ {f = 1} f && /^ *$/ {exit} f' "$BASE/runs/fsync/pg_test_fsync.out" | sed 's/^/  /'
  fi
  print_table
  echo "total wall time: $((SECONDS - t0)) s, of which ${LOCKWAIT} s waiting for $LOCK (other benchmarks)"
}
main "$@"
