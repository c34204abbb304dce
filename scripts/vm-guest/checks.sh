#!/bin/bash
# The checks of scripts/vm-test.sh, run inside the bookworm guest by
# vm-test.service once it has booted. No network interface: the gateway and the
# test server (vm-test-server.service) meet on 127.0.0.1.
#
# Writes one line per check, "PASS name: detail" or "FAIL name: detail", then
# "END", to the virtio serial port vm-test (and to /var/log/vm-test-results,
# which the host reads with debugfs when the port did not come up);
# "# ..." lines are diagnostics shown under a failure, "TIME phase secs" the
# duration of each phase. Then powers the guest off.
set -u

D=/opt/vm-test
# shellcheck source=/dev/null
. "$D/versions"
UNIT=profilo-gateway.service
CONF=/etc/profilo-gateway/config.toml
USERNAME=vm-gateway@example.com
PASSWORD='vm test pass: spaces, quotes '"'"' and a # are kept'
export DEBIAN_FRONTEND=noninteractive
# Byte lengths for Content-Length; plain ASCII output to parse.
export LC_ALL=C

RESULTS=/var/log/vm-test-results
exec 3>>"$RESULTS"
PORT=/dev/virtio-ports/vm-test
for _ in $(seq 30); do
    [ -e "$PORT" ] && break
    sleep 1
done
if [ -e "$PORT" ]; then exec 4>"$PORT"; else exec 4>/dev/null; fi

out() {
    printf '%s\n' "$*" >&3
    printf '%s\n' "$*" >&4
    printf 'vm-test: %s\n' "$*"
}
# report RC NAME DETAIL: PASS when RC is 0. The condition is tested just before,
# its status saved (`[[ ... ]]; report $? name "..."`); DETAIL holds only
# variables, so that nothing in it runs after the test and changes $?.
report() {
    if [ "$1" = 0 ]; then out "PASS $2: $3"; else out "FAIL $2: $3"; fi
}
diag() { while IFS= read -r l; do out "# $l"; done; }
# The unit's last journal lines, for a failure's diagnostics.
journal_tail() { journalctl -u "$UNIT" --no-pager -o short-monotonic -n 25 2>&1 | diag; }
prop() { systemctl show -P "$1" "$UNIT"; }
# wait_for SECS COMMAND...: polls once a second; true when COMMAND succeeded in time.
wait_for() {
    local secs="$1"
    shift
    local end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
        if "$@"; then return 0; fi
        sleep 1
    done
    "$@"
}
t_phase=""
t_start=0
timed() {
    if [ -n "$t_phase" ]; then out "TIME $t_phase $((SECONDS - t_start))"; fi
    t_phase="$1"
    t_start=$SECONDS
}
# The test server over bash's /dev/tcp: a Python client would take seconds to
# start in a busy emulated guest, once per poll.
# http METHOD PATH [JSON]: prints the body of a 2xx answer; fails otherwise.
http() {
    local body="${3:-}" resp
    { exec 5<>/dev/tcp/127.0.0.1/8000; } 2>/dev/null || return 1
    printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$1" "$2" "${#body}" "$body" >&5
    resp="$(cat <&5)"
    exec 5<&-
    [[ ${resp%%$'\r'*} =~ ^HTTP/1\.[01]\ 2[0-9][0-9] ]] || return 1
    printf '%s\n' "${resp#*$'\r\n\r\n'}"
}
# json_int KEY: the integer KEY of the flat JSON object on stdin, -1 without it.
json_int() {
    local v
    v="$(grep -oE "\"$1\": *[0-9]+" | head -1 | grep -oE '[0-9]+$')"
    echo "${v:--1}"
}
server_up() { http GET /test-control/stats/ >/dev/null; }
stats() { http GET /test-control/stats/; }
stat_of() { stats | json_int "$1"; }
# Readings the server stored (one "id" each).
stored() { http GET /test-control/readings/ | grep -oE '"id": *[0-9]+' | wc -l; }
faults() { http POST /test-control/faults/ "$1" >/dev/null; }
pending() {
    profilo-gateway --config "$CONF" queue stats --json 2>/dev/null | json_int pending
}
main_pid() { prop MainPID; }
is_running() { [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; }

out "TIME boot-to-checks $(cut -d. -f1 /proc/uptime)"

# ---- install ----------------------------------------------------------------------
timed install
cd "$D/debs" || exit 1
# As the README says, from the package's directory; nothing to download.
apt install -y -q "./$DEB1" >/tmp/apt-install.log 2>&1
rc=$?
version="$(dpkg-query -W -f='${Version}' profilo-gateway 2>/dev/null)"
[ $rc = 0 ] && [ "$version" = "$V1" ]
report $? install "apt install ./$DEB1 (no network): rc $rc, version $version"
[ $rc = 0 ] || tail -20 /tmp/apt-install.log | diag

groups_of="$(id -nG profilo-gateway 2>/dev/null)"
shell_of="$(getent passwd profilo-gateway | cut -d: -f7)"
uid_of="$(id -u profilo-gateway 2>/dev/null || echo none)"
[[ " $groups_of " == *" i2c "* && " $groups_of " == *" gpio "* && $shell_of = /usr/sbin/nologin && $uid_of -lt 1000 ]]
report $? user-groups "system user profilo-gateway (uid $uid_of, shell $shell_of) in groups: $groups_of"

enabled="$(systemctl is-enabled "$UNIT" 2>&1)"
active="$(systemctl is-active "$UNIT" 2>&1)"
[[ $enabled = enabled && $active = inactive ]]
report $? unit-enabled-not-started "is-enabled: $enabled, is-active: $active"

# ---- configure as the README says, start ------------------------------------------------
timed start
# Step 3b: the password file, root:root 0600, handed over by LoadCredential=.
install -m 0600 -o root -g root /dev/null /etc/profilo-gateway/password
printf '%s' "$PASSWORD" | tee /etc/profilo-gateway/password >/dev/null
# Step 4: the conffile edited (an upgrade must keep it); quicker sampling and
# shorter backoffs than the defaults, so that the checks take seconds.
sed -i -e 's|^# username = .*|username = "'"$USERNAME"'"|' \
    -e 's|^interval = "5s"|interval = "2s"|' \
    -e 's|^login_backoff_max = .*|login_backoff_max = "5s"|' \
    -e 's|^backoff_max = .*|backoff_max = "3s"|' "$CONF"
if ! wait_for 90 server_up; then
    echo "the test server does not answer" | diag
    journalctl -u vm-test-server --no-pager -n 20 | diag
fi
http POST /test-control/users/ "{\"username\": \"$USERNAME\", \"password\": \"$PASSWORD\", \"active\": true}" >/dev/null ||
    echo "cannot create the user $USERNAME on the test server" | diag

systemctl start "$UNIT"
rc=$?
pid="$(main_pid)"
state="$(prop ActiveState)/$(prop SubState)"
status_text="$(prop StatusText)"
[[ $rc = 0 && $state = active/running && -n $status_text ]]
report $? start-ready "systemctl start (returns once READY=1 came): rc $rc, $state, StatusText \"$status_text\""
[ $rc = 0 ] || journal_tail

owner="$(stat -c %U "/proc/$pid" 2>/dev/null)"
state_dir="$(stat -c '%U:%G %a' /var/lib/profilo-gateway 2>/dev/null)"
[[ $owner = profilo-gateway && $state_dir = "profilo-gateway:profilo-gateway 750" ]]
report $? service-user "main process $pid runs as $owner; StateDirectory /var/lib/profilo-gateway $state_dir"

# ---- uploads: login, refresh, rotation ----------------------------------------------------
timed uploads
uploads_ok() { [ "$(stored)" -ge 5 ] && [ "$(stat_of refresh_ok)" -ge 2 ]; }
wait_for 90 uploads_ok
pw_mode="$(stat -c '%U:%G %a' /etc/profilo-gateway/password)"
login_ok="$(stat_of login_ok)"
login_failed="$(stat_of login_failed)"
[[ $pw_mode = "root:root 600" && $login_ok -ge 1 && $login_failed = 0 ]]
report $? credential "password from LoadCredential= only (/etc/profilo-gateway/password $pw_mode, nothing else configured): logins accepted $login_ok, refused $login_failed"
count="$(stored)"
refresh_ok="$(stat_of refresh_ok)"
refresh_failed="$(stat_of refresh_failed)"
counters="$(stats | tr -d '{}"' | tr ',' ' ' | sed -E 's/ ?[a-z_0-9]+:0\b//g')"
# Rotation and blacklisting are on: a refresh with an already rotated token is
# refused, so refreshes that all succeed used each new refresh token.
[[ $count -ge 5 && $login_ok -ge 1 && $refresh_ok -ge 2 && $refresh_failed = 0 ]]
report $? uploads "readings stored $count; login $login_ok, refresh (each rotating the refresh token) $refresh_ok ok, $refresh_failed refused; server counters: $counters"
uploads_ok || journal_tail

# Journal fields: a refused reading (400) is logged with READING_ID and STATUS.
timed journal
faults '{"reject_temperature_above": -1000}'
refused_logged() { journalctl -u "$UNIT" STATUS=400 -o verbose --no-pager 2>/dev/null | grep -q '^ *READING_ID='; }
wait_for 30 refused_logged
faults '{}'
fields="$(journalctl -u "$UNIT" STATUS=400 -o verbose --no-pager -n 1 2>/dev/null | grep -E '^ *(READING_ID|STATUS)=' | tr -s ' \n' ' ')"
refused_logged
report $? journal-fields "journalctl -u $UNIT STATUS=400 (a refused reading):$fields"

# ---- reload (SIGHUP) -------------------------------------------------------------------------
timed reload
pid="$(main_pid)"
since="$(date '+%Y-%m-%d %H:%M:%S')"
reload_out="$(systemctl reload "$UNIT" 2>&1)"
rc=$?
reload_out="$(tr '\n' ' ' <<<"$reload_out" | sed 's/ *$//')"
# The daemon says what SIGHUP made it do: the signal reached it, not only systemd's job.
reloaded() { journalctl -u "$UNIT" --since "$since" --no-pager -o cat 2>/dev/null | grep -m1 '^reload: password sources read again, the password comes from'; }
wait_for 20 reloaded >/dev/null
said="$(reloaded)"
new_pid="$(main_pid)"
state="$(prop ActiveState)/$(prop SubState)"
[[ $rc = 0 && $pid = "$new_pid" && $state = active/running && -n $said ]]
report $? reload "systemctl reload: rc $rc${reload_out:+ ($reload_out)}; main PID $pid -> $new_pid, $state; daemon: ${said:-nothing logged}"
[[ $rc = 0 && -n $said ]] || journal_tail
is_running || { systemctl reset-failed "$UNIT"; systemctl restart "$UNIT"; }

# ---- systemd-analyze security ------------------------------------------------------------------
timed security
sec="$(systemd-analyze security --no-pager "$UNIT" 2>&1 | grep -i 'overall exposure' | tail -1)"
level="$(grep -oE '[0-9]+\.[0-9]+' <<<"$sec" | head -1)"
[ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'
report $? security "systemd-analyze security $UNIT (online, <= 2.0): ${sec:-no answer}"

# ---- watchdog ---------------------------------------------------------------------------------------
timed watchdog
pid="$(main_pid)"
restarts="$(prop NRestarts)"
kill -STOP "$pid"
stopped_at=$SECONDS
restarted() { [ "$(prop NRestarts)" -gt "$restarts" ] && is_running && [ "$(main_pid)" != "$pid" ]; }
wait_for 150 restarted
rc=$?
took=$((SECONDS - stopped_at))
wd_line="$(journalctl -u "$UNIT" --no-pager -o cat 2>/dev/null | grep -m1 'Watchdog timeout')"
new_pid="$(main_pid)"
new_restarts="$(prop NRestarts)"
[[ $rc = 0 && -n $wd_line ]]
report $? watchdog "SIGSTOP of PID $pid: \"$wd_line\", running again as PID $new_pid after ${took}s (NRestarts $restarts -> $new_restarts)"
[ $rc = 0 ] || { journal_tail; systemctl reset-failed "$UNIT"; systemctl restart "$UNIT"; }

# ---- invalid configuration ---------------------------------------------------------------------------
timed invalid-config
# A bad value in the conffile, as a technician's typo would be.
cp "$CONF" /tmp/config.toml.good
sed -i 's|^interval = .*|interval = "soon"|' "$CONF"
systemctl restart "$UNIT" 2>/dev/null
# systemd decides at the exit: a unit it restarts waits in "auto-restart" for
# RestartSec=, one it does not is "failed" at once. Looked at twice; NRestarts
# counts the automatic restarts since this (manual) restart.
first="$(prop ActiveState)/$(prop SubState) status $(prop ExecMainStatus)"
sleep 5
second="$(prop ActiveState)/$(prop SubState) status $(prop ExecMainStatus)"
restarts="$(prop NRestarts)"
named="$(journalctl -u "$UNIT" --no-pager -o cat -n 30 2>/dev/null | grep -m1 -F '"soon"')"
[[ $first = "failed/failed status 78" && $second = "$first" && $restarts = 0 && -n $named ]]
report $? invalid-config "interval = \"soon\" in [sampling]: $first, 5 s later $second, automatic restarts $restarts; journal: $named"
cp /tmp/config.toml.good "$CONF"
systemctl reset-failed "$UNIT"
systemctl start "$UNIT" || { echo "cannot start again after the invalid-config check" | diag; journal_tail; }

# ---- upgrade ------------------------------------------------------------------------------------------
timed upgrade
# The server goes away, so that readings wait in the queue through the upgrade.
stored_before="$(stored)"
systemctl stop vm-test-server.service
queued() { [ "$(pending)" -ge 3 ]; }
wait_for 60 queued
pid="$(main_pid)"
before="$(pending)"
apt install -y -q "./$DEB2" >/tmp/apt-upgrade.log 2>&1
rc=$?
version="$(dpkg-query -W -f='${Version}' profilo-gateway)"
after="$(pending)"
new_pid="$(main_pid)"
state="$(prop ActiveState)/$(prop SubState)"
kept_conf="$(grep -c "^username = \"$USERNAME\"" "$CONF")"
[[ $rc = 0 && $version = "$V2" && $pid != "$new_pid" && $new_pid != 0 && $state = active/running &&
    $before -ge 1 && $after -ge $before && $kept_conf = 1 ]]
report $? upgrade "apt install ./$DEB2 over $V1 (server down): rc $rc, version $version, main PID $pid -> $new_pid ($state), pending $before -> $after, edited conffile kept: $kept_conf"
[ $rc = 0 ] || tail -20 /tmp/apt-upgrade.log | diag
# Back online: what waited through the upgrade reaches the server.
systemctl start vm-test-server.service
wait_for 90 server_up
drained() { [ "$(stored)" -ge $((stored_before + before)) ]; }
wait_for 90 drained
rc=$?
count="$(stored)"
report $rc upgrade-queue-uploaded "server back: stored $stored_before -> $count (the $before queued before the upgrade included), pending now $(pending)"

# ---- the sandbox refused nothing -----------------------------------------------------------------------
timed sandbox
refused="$( (journalctl -b -u "$UNIT" --no-pager -o cat; journalctl -b -k --no-pager -o cat) 2>/dev/null |
    grep -E 'SIGSYS|status=31|Bad system call|Operation not permitted|EPERM|os error 1\)|type=1326' | head -5)"
lines="$(journalctl -b -u "$UNIT" --no-pager -o cat 2>/dev/null | wc -l)"
[ -z "$refused" ]
report $? no-sigsys-eperm "no SIGSYS, no EPERM in the unit's journal ($lines lines: start, uploads, refused readings, reload, watchdog, invalid config, upgrade) nor in the kernel's"
[ -z "$refused" ] || diag <<<"$refused"

# ---- remove, purge ------------------------------------------------------------------------------------------
timed remove-purge
apt remove -y -q profilo-gateway >/tmp/apt-remove.log 2>&1
rc=$?
state="$(dpkg-query -W -f='${db:Status-Abbrev}' profilo-gateway 2>/dev/null | tr -d ' ')"
active="$(systemctl is-active "$UNIT" 2>&1)"
binary=gone
[ -e /usr/bin/profilo-gateway ] && binary=present
kept=""
for f in "$CONF" /etc/profilo-gateway/password /var/lib/profilo-gateway/queue.db; do
    [ -f "$f" ] && kept="$kept $f"
done
[[ $rc = 0 && $state = rc && $active != active && $binary = gone &&
    $kept = " $CONF /etc/profilo-gateway/password /var/lib/profilo-gateway/queue.db" ]]
report $? remove "apt remove: rc $rc, dpkg state $state, service $active, binary $binary, kept:$kept"
[ $rc = 0 ] || tail -20 /tmp/apt-remove.log | diag

apt purge -y -q profilo-gateway >/tmp/apt-purge.log 2>&1
rc=$?
left=""
for f in /etc/profilo-gateway /var/lib/profilo-gateway "/etc/systemd/system/multi-user.target.wants/$UNIT" "/usr/lib/systemd/system/$UNIT"; do
    [ -e "$f" ] && left="$left $f"
done
state="$(dpkg-query -W -f='${db:Status-Abbrev}' profilo-gateway 2>/dev/null | tr -d ' ')"
user_kept=no
getent passwd profilo-gateway >/dev/null && user_kept=yes
[[ $rc = 0 && -z $left ]]
report $? purge "apt purge: rc $rc, dpkg state '$state', left behind:${left:- nothing} (the system user stays, Debian practice: $user_kept)"
[ $rc = 0 ] || tail -20 /tmp/apt-purge.log | diag
timed end

out "END"
exec 3>&- 4>&-
sync
systemctl poweroff --no-block
