#!/usr/bin/env bash
# Start a local SLURM cluster with two emulated nodes, n1 and n2, on loopback.
#
#   tools/slurm_local/start.sh DIR        # then: export SLURM_CONF=DIR/slurm.conf
#   tools/slurm_local/stop.sh DIR
#
# Everything (config, munge key/socket, state, spool, logs, pid files) lives under DIR; nothing in /etc is read
# or written and a system munged/slurmd, if any, is left alone. Needs root (SlurmUser=root) and the Debian
# packages slurm-wlm and munge (`bash tools/setup.sh dev`). Ports: slurmctld on $SLURM_LOCAL_PORT_BASE (default
# 6817), slurmd n1/n2 on the next two (6818, 6819). The last line printed is the `export SLURM_CONF=…` to use.
# Waits until both nodes are idle (SLURM_LOCAL_START_TIMEOUT seconds, default 60); on failure it prints the
# daemon logs, stops what it started and exits non-zero.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "slurm_local/start: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR"
[ "$(id -u)" = 0 ] || die "must run as root (the local cluster uses SlurmUser=root)"
for bin in slurmctld slurmd munged scontrol sinfo runuser; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] \
    || die "$bin not found: install slurm-wlm and munge (bash tools/setup.sh dev)"
done
id munge >/dev/null 2>&1 || die "no 'munge' user: install the munge package"
PATH=$PATH:/usr/sbin

mkdir -p "$1"
dir=$(cd "$1" && pwd)
base=${SLURM_LOCAL_PORT_BASE:-6817}
timeout_s=${SLURM_LOCAL_START_TIMEOUT:-60}
export SLURM_CONF=$dir/slurm.conf
marker=$dir/.mmm4rec-slurm-local

# start.sh wipes DIR's state/spool/run/log/munge: only ever in an empty directory or one it set up before.
if [ ! -e "$marker" ] && [ -n "$(ls -A "$dir")" ]; then
  die "$dir is not empty and was not set up by start.sh: give an empty or new directory"
fi

for pidfile in "$dir"/run/*.pid; do
  [ -e "$pidfile" ] || continue
  if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "a cluster is already running from $dir ($pidfile); run tools/slurm_local/stop.sh $dir first"
  fi
done

for port in "$base" $((base + 1)) $((base + 2)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use (another cluster?): stop it or choose SLURM_LOCAL_PORT_BASE"
  fi
done

# Fresh state every start: the scheduler's first pass comes a few seconds after an empty-state start.
rm -rf "$dir/state" "$dir/spool" "$dir/run" "$dir/log" "$dir/munge"
mkdir -p "$dir/state" "$dir/spool/n1" "$dir/spool/n2" "$dir/run" "$dir/log" "$dir/munge"
echo "local SLURM cluster directory (tools/slurm_local/start.sh)" >"$marker"
# munged runs as the munge user: it must be able to reach DIR/munge (which it owns and which must be
# world-executable for clients to reach the socket), and it refuses
# group/world-writable directories on the way to its socket and key.
chmod 0755 "$dir"
chmod 0755 "$dir/munge"   # munged wants its socket directory world-executable
if ! runuser -u munge -- test -x "$dir"; then
  die "the munge user cannot reach $dir (a parent directory is not world-traversable); use a DIR under /tmp"
fi

# --- munged: its own key, socket, pid, log and seed under DIR/munge
mungedir=$dir/munge
head -c 1024 /dev/urandom >"$mungedir/munge.key"
chown -R munge:munge "$mungedir"
chmod 0400 "$mungedir/munge.key"
runuser -u munge -- /usr/sbin/munged \
  --socket="$mungedir/munge.socket.2" --key-file="$mungedir/munge.key" --pid-file="$mungedir/munged.pid" \
  --log-file="$mungedir/munged.log" --seed-file="$mungedir/munged.seed" \
  || { cat "$mungedir/munged.log" >&2 2>/dev/null; die "munged failed to start"; }
# stop.sh finds every pid file under DIR/run; munged must write its own (as munge), so link it there.
ln -sf "$mungedir/munged.pid" "$dir/run/munged.pid"

# --- slurm.conf from the template
sed -e "s|@DIR@|$dir|g" -e "s|@HOST@|$(hostname -s)|g" -e "s|@USER@|root|g" \
    -e "s|@CTLD_PORT@|$base|g" -e "s|@CRED_EXPIRE@|${SLURM_LOCAL_CRED_EXPIRE:-5}|g" -e "s|@N1_PORT@|$((base + 1))|g" -e "s|@N2_PORT@|$((base + 2))|g" \
    "$here/slurm.conf.in" >"$SLURM_CONF"

fail() {
  echo "slurm_local/start: $*" >&2
  for log in "$dir"/log/*.log "$mungedir/munged.log"; do
    [ -f "$log" ] && { echo "==== $log" >&2; tail -n 30 "$log" >&2; }
  done
  "$here/stop.sh" "$dir" >&2 || true
  exit 1
}

/usr/sbin/slurmctld || fail "slurmctld failed to start"
/usr/sbin/slurmd -N n1 || fail "slurmd n1 failed to start"
/usr/sbin/slurmd -N n2 || fail "slurmd n2 failed to start"

deadline=$((SECONDS + timeout_s))
while :; do
  states=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
  case " $states" in *" n1=idle "*) case " $states" in *" n2=idle "*) break ;; esac ;; esac
  [ $SECONDS -lt $deadline ] || fail "nodes not idle after ${timeout_s}s (sinfo: ${states:-no answer})"
  for pidfile in "$dir"/run/slurmctld.pid "$dir"/run/slurmd-n1.pid "$dir"/run/slurmd-n2.pid; do
    kill -0 "$(cat "$pidfile" 2>/dev/null || echo 0)" 2>/dev/null || fail "a daemon exited (no process for $pidfile)"
  done
  sleep 0.5
done

echo "slurm_local: cluster up in $dir — nodes n1 n2 idle, partition debug (ports $base-$((base + 2)))" >&2
echo "export SLURM_CONF=$SLURM_CONF"
