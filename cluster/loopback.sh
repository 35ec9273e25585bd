#!/usr/bin/env bash
# cluster/onprem.yaml brought up for real, on this machine: an sshd on a loopback address stands in for the
# head host; `ray up` reaches it over ssh, copies this repository there and starts Ray; `ray job submit` runs a
# short search on it; `ray down` takes it away. Needs sshd and rsync (Debian: apt-get install openssh-server
# rsync) and a Linux machine (every 127.x.y.z is loopback). Its last run's output: cluster/loopback-run.txt.
#
#   bash cluster/loopback.sh 2>&1 | tee cluster/loopback-run.txt
#
# The head host's own Python, which a real host has before `ray up`, is made here: a virtual environment that
# sees this checkout's installed packages (torch, Ray), so nothing is downloaded and this checkout's environment
# is left as it was; the ssh sessions' home is a folder of this run, whose .bashrc activates it. onprem.yaml's
# setup then installs the copied repository there. Its `ray stop` would stop every Ray of this machine, so the
# script refuses to start while another runs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HEAD_IP=${HEAD_IP:-127.0.0.5}
WORK=${WORK:-/tmp/lrml-loopback}
PYTHON=${PYTHON:-$(command -v python)}
SITE_PACKAGES=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
RAY_BIN=$(dirname "$PYTHON")/ray
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

for tool in sshd rsync ssh-keygen; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "loopback.sh: $tool is not installed" >&2; exit 2; }
done
if pgrep -f "raylet" >/dev/null; then
  echo "loopback.sh: a Ray already runs on this machine; the head's ray stop would stop it" >&2
  exit 2
fi

rm -rf "$WORK" && mkdir -p "$WORK/ssh" && chmod 700 "$WORK/ssh"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/user_key"
cp "$WORK/ssh/user_key.pub" "$WORK/ssh/authorized_keys"
cat > "$WORK/ssh/sshd_config" <<EOF
ListenAddress $HEAD_IP:22
HostKey $WORK/ssh/host_key
AuthorizedKeysFile $WORK/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
PidFile $WORK/ssh/sshd.pid
SetEnv HOME=$WORK/home
EOF
mkdir -p "$WORK/home"
"$PYTHON" -m venv --without-pip "$WORK/head-venv"
HEAD_SITE=$("$WORK/head-venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SITE_PACKAGES" > "$HEAD_SITE/checkout.pth"
printf '#!/bin/sh\nexec "%s" -c "import sys; from ray.scripts.scripts import main; sys.argv[0] = \\"ray\\"; main()" "$@"\n' \
  "$WORK/head-venv/bin/python" > "$WORK/head-venv/bin/ray"  # the `ray` command the head's Ray package would install
chmod +x "$WORK/head-venv/bin/ray"
printf '%s\n' "source $WORK/head-venv/bin/activate" "export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0" \
  > "$WORK/home/.bashrc"
mkdir -p /run/sshd
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
"$SSHD" -D -e -f "$WORK/ssh/sshd_config" 2>"$WORK/ssh/sshd.log" &
SSHD_PID=$!
cleanup() {
  "$RAY_BIN" down -y "$WORK/cluster.yaml" >/dev/null 2>&1 || true
  kill "$SSHD_PID" 2>/dev/null || true
}
trap cleanup EXIT

# cluster/onprem.yaml with this machine's loopback address as its one host (its dashboard on that address, not
# 0.0.0.0), the key above, and the copied repository installed into the head's Python; the rest as users get it.
"$PYTHON" - "$REPO/cluster/onprem.yaml" "$WORK/cluster.yaml" <<EOF
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config["provider"].update(head_ip="$HEAD_IP", worker_ips=[])
config["auth"] = {"ssh_user": "$(id -un)", "ssh_private_key": "$WORK/ssh/user_key"}
config.update(min_workers=0, max_workers=0, file_mounts={"$WORK/lrml-tune": "$REPO"})
config["setup_commands"] = ["python -m pip install -q --no-deps --no-build-isolation -e $WORK/lrml-tune"]
config["head_start_ray_commands"] = [command.replace("--head", "--head --node-ip-address=$HEAD_IP --num-cpus=2")
                                     .replace("--dashboard-host=0.0.0.0", "--dashboard-host=$HEAD_IP")
                                     for command in config["head_start_ray_commands"]]
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF

step() { echo; echo "\$ $*"; }
clean() {  # no colours, debug lines or rsync's list of every file it copies (its totals stay)
  sed -r 's/\x1b\[[0-9;]*m//g' | awk '/^sending incremental file list/ {skip = 1; next} /^sent / {skip = 0} !skip' \
    | grep -vE "VV?INFO|^\s*$|^-+$" || true
}
step ray up -y cluster.yaml "(cluster/onprem.yaml, head $HEAD_IP over ssh)"
"$RAY_BIN" up -y --no-config-cache "$WORK/cluster.yaml" 2>&1 | clean

step ray job submit --address http://$HEAD_IP:8265 -- python tune/search.py ...
"$RAY_BIN" job submit --address "http://$HEAD_IP:8265" -- bash -c "cd $WORK/lrml-tune && python tune/search.py \
  --address auto --node-ip-address $HEAD_IP --num-samples 4 --max-epochs 2 --grace-period 1 --storage-path $WORK/runs --name loopback" 2>&1 \
  | clean

step ls "$WORK/runs/loopback"
ls "$WORK/runs/loopback" | cut -c1-100

step ray down -y cluster.yaml
"$RAY_BIN" down -y "$WORK/cluster.yaml" 2>&1 | clean
sleep 2
if pgrep -f raylet >/dev/null; then echo "a Ray process outlived ray down" >&2; exit 1; fi
echo "ray down: no Ray process left on this machine"
