#!/bin/sh
# wid-droplet: this Droplet's workload identity, from the workload identity proxy that created it.
#
#   wid-droplet provision BASE_URL TEAM_UUID PROVISIONING_TOKEN   first boot (cloud-init runcmd)
#   wid-droplet refresh                                            wid-token-refresh.timer, every 5 min
#   wid-droplet recover                                            when the refresh chain was lost
#
# Proves the Droplet's identity by signing with its SSHD host key (ssh-keygen -Y sign); the proxy
# checks the signature against the host key it fetches over SSH from the Droplet's public IPv4.
# Writes token, refresh_token, expires_at, droplet_id, team_uuid and base_url (mode 0600, each
# replaced atomically) to /root/secrets/digitalocean.com/serviceaccount/.
# Needs sh, curl, python3 and ssh-keygen. Environment, for tests (leave unset on a Droplet):
#   WID_DROPLET_ROOT    prefix for every path (default: the real root)
#   WID_METADATA_URL    metadata service (default http://169.254.169.254/metadata/v1)
#   WID_RETRY_DELAYS    seconds between attempts (default: provision "5 10 20 40 60 120 240 300", about
#                       13 minutes, within the provisioning token's 15; refresh and recover "5 15 30")
#   WID_HOST_KEY_TYPES  host key types to sign with, first found wins (default "ed25519 ecdsa rsa")
#   WID_SYSTEMCTL       systemctl command (default systemctl)
set -eu
umask 077

ROOT=${WID_DROPLET_ROOT:-}
SA_DIR="$ROOT/root/secrets/digitalocean.com/serviceaccount"
SSH_DIR="$ROOT/etc/ssh"
METADATA_URL=${WID_METADATA_URL:-http://169.254.169.254/metadata/v1}
HOST_KEY_TYPES=${WID_HOST_KEY_TYPES:-ed25519 ecdsa rsa}
SYSTEMCTL=${WID_SYSTEMCTL:-systemctl}
NS_PROVE=droplet-provisioning@wid
NS_RECOVER=droplet-recovery@wid
TIMER=wid-token-refresh.timer
export SA_DIR

log() { printf 'wid-droplet: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for tool in curl python3 ssh-keygen; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM HUP

# JSON and files, without jq: python3 reads secrets from files so they never appear in argv.
PY='
import base64, fcntl, json, os, sys, tempfile
sa = os.environ["SA_DIR"]
cmd, args = sys.argv[1], sys.argv[2:]

def read(path):
    with open(path) as handle:
        return handle.read().strip()

def write_atomic(name, value):
    fd, tmp = tempfile.mkstemp(dir=sa, prefix="." + name + ".")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, os.path.join(sa, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

if cmd == "lock":
    fcntl.flock(9, fcntl.LOCK_EX)
elif cmd == "prove-body":
    body = {"signature": read(args[0])}
    if args[1:] and args[1]:
        body["droplet_id"] = int(args[1])
    print(json.dumps(body))
elif cmd == "refresh-body":
    print(json.dumps({"refresh_token": read(os.path.join(sa, "refresh_token"))}))
elif cmd == "challenge-body":
    print(json.dumps({"team_uuid": args[0], "droplet_id": int(args[1])}))
elif cmd == "recover-body":
    print(json.dumps({"challenge": read(args[0]), "signature": read(args[1])}))
elif cmd == "field":
    with open(args[0]) as handle:
        value = json.load(handle).get(args[1])
    if not isinstance(value, str):
        sys.exit("the response has no %s" % args[1])
    sys.stdout.write(value)
elif cmd == "error":
    try:
        with open(args[0]) as handle:
            data = json.load(handle)
        print("%s: %s" % (data.get("id"), data.get("message")))
    except Exception:
        print("no JSON error in the response")
elif cmd == "store":
    with open(args[0]) as handle:
        data = json.load(handle)
    token, refresh, expires = data.get("token"), data.get("refresh_token"), data.get("expires_at")
    if not (isinstance(token, str) and isinstance(refresh, str) and isinstance(expires, int)):
        sys.exit("the response lacks token, refresh_token or expires_at")
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    os.makedirs(sa, mode=0o700, exist_ok=True)
    os.chmod(sa, 0o700)
    write_atomic("refresh_token", refresh)
    write_atomic("token", token)
    write_atomic("expires_at", str(expires))
    write_atomic("droplet_id", str(claims["droplet_id"]))
    write_atomic("team_uuid", args[2])
    write_atomic("base_url", args[1])
else:
    sys.exit("unknown helper command " + cmd)
'
py() { python3 -c "$PY" "$@"; }

# One run at a time: the timer, a manual refresh and a recovery must never race with one token.
lock() {
  mkdir -p "$SA_DIR"
  chmod 700 "$SA_DIR"
  exec 9>"$SA_DIR/.lock"
  py lock
}

# sign NAMESPACE INFILE OUTFILE: ssh-keygen -Y sign with this Droplet's SSHD host key.
sign() {
  key=
  for type in $HOST_KEY_TYPES; do
    if [ -s "$SSH_DIR/ssh_host_${type}_key" ]; then
      key="$SSH_DIR/ssh_host_${type}_key"
      break
    fi
  done
  [ -n "$key" ] || die "no SSH host key ($HOST_KEY_TYPES) in $SSH_DIR"
  ssh-keygen -Y sign -f "$key" -n "$1" <"$2" >"$3" 2>"$WORK/sign.err" \
    || die "ssh-keygen -Y sign failed: $(cat "$WORK/sign.err")"
}

# post PATH BODYFILE OUTFILE HEADERFILE: prints the HTTP status (000 when there was no answer).
post() {
  curl --silent --show-error --connect-timeout 10 --max-time 90 -o "$3" -w '%{http_code}' \
    -X POST -H 'Content-Type: application/json' -H "@$4" --data-binary "@$2" \
    "$BASE_URL$1" 2>"$WORK/curl.err" || true
}

why() {
  if [ "$STATUS" = 000 ]; then cat "$WORK/curl.err"; else py error "$1"; fi
}

# call PATH BODYFILE OUTFILE HEADERFILE: post, retrying while the answer is 5xx, 429 or none. Sets STATUS.
call() {
  attempt=0
  for delay in $RETRY_DELAYS -; do
    attempt=$((attempt + 1))
    STATUS=$(post "$@")
    case $STATUS in
      2??) return 0 ;;
      000|429|5??) ;;
      *) return 1 ;;
    esac
    [ "$delay" != - ] || return 1
    log "POST $1: attempt $attempt answered $STATUS ($(why "$3")); retrying in ${delay}s"
    sleep "$delay"
  done
  return 1
}

metadata_droplet_id() {
  id=$(curl --silent --fail --max-time 5 "$METADATA_URL/id" 2>/dev/null || true)
  case $id in
    '' | *[!0-9]*) printf '' ;;
    *) printf '%s' "$id" ;;
  esac
}

load_config() {
  [ -s "$SA_DIR/base_url" ] && [ -s "$SA_DIR/team_uuid" ] || die "$SA_DIR has no base_url or team_uuid: provision first"
  BASE_URL=$(cat "$SA_DIR/base_url")
  TEAM=$(cat "$SA_DIR/team_uuid")
}

enable_timer() {
  if command -v "$SYSTEMCTL" >/dev/null 2>&1; then
    "$SYSTEMCTL" daemon-reload && "$SYSTEMCTL" enable --now "$TIMER" || die "could not enable $TIMER"
  else
    log "$SYSTEMCTL not found: enable $TIMER by hand to keep the token fresh"
  fi
}

provision() {
  [ $# -eq 3 ] || die "usage: wid-droplet provision BASE_URL TEAM_UUID PROVISIONING_TOKEN"
  BASE_URL=$1
  TEAM=$2
  lock
  printf '%s' "$3" >"$WORK/provisioning_token"
  sign "$NS_PROVE" "$WORK/provisioning_token" "$WORK/signature"
  py prove-body "$WORK/signature" "$(metadata_droplet_id)" >"$WORK/body"
  printf 'Authorization: Bearer %s\n' "$3" >"$WORK/headers"
  call /v1/oidc/prove "$WORK/body" "$WORK/out" "$WORK/headers" \
    || die "proving this Droplet's host key failed: HTTP $STATUS ($(why "$WORK/out"))"
  py store "$WORK/out" "$BASE_URL" "$TEAM"
  log "workload identity token written to $SA_DIR"
  enable_timer
}

# Get a new chain by signing a fresh challenge with the host key this Droplet first proved.
recover() {
  droplet_id=$(cat "$SA_DIR/droplet_id" 2>/dev/null || metadata_droplet_id)
  [ -n "$droplet_id" ] || die "cannot tell this Droplet's id (no $SA_DIR/droplet_id, no metadata service)"
  printf 'Accept: application/json\n' >"$WORK/headers"
  py challenge-body "$TEAM" "$droplet_id" >"$WORK/body"
  call /v1/oidc/recover/challenge "$WORK/body" "$WORK/out" "$WORK/headers" \
    || die "recovery challenge refused: HTTP $STATUS ($(why "$WORK/out"))"
  py field "$WORK/out" challenge >"$WORK/challenge"
  sign "$NS_RECOVER" "$WORK/challenge" "$WORK/signature"
  py recover-body "$WORK/challenge" "$WORK/signature" >"$WORK/body"
  call /v1/oidc/recover "$WORK/body" "$WORK/out" "$WORK/headers" \
    || die "recovery failed: HTTP $STATUS ($(why "$WORK/out"))"
  py store "$WORK/out" "$BASE_URL" "$TEAM"
  log "recovered: new token and refresh chain written to $SA_DIR"
}

refresh() {
  load_config
  lock
  [ -s "$SA_DIR/refresh_token" ] || die "no refresh_token in $SA_DIR: provision first"
  printf 'Accept: application/json\n' >"$WORK/headers"
  py refresh-body >"$WORK/body"
  if call /v1/oidc/refresh "$WORK/body" "$WORK/out" "$WORK/headers"; then
    py store "$WORK/out" "$BASE_URL" "$TEAM"
    log "token refreshed"
    return 0
  fi
  [ "$STATUS" = 401 ] || die "refresh failed: HTTP $STATUS ($(why "$WORK/out"))"
  log "refresh refused ($(why "$WORK/out")); recovering with the host key"
  recover
}

command=${1:-}
[ $# -eq 0 ] || shift
if [ "$command" = provision ]; then
  RETRY_DELAYS=${WID_RETRY_DELAYS-5 10 20 40 60 120 240 300}
else
  RETRY_DELAYS=${WID_RETRY_DELAYS-5 15 30}
fi
case $command in
  provision) provision "$@" ;;
  refresh) refresh ;;
  recover) load_config; lock; recover ;;
  *) die "usage: wid-droplet provision BASE_URL TEAM_UUID PROVISIONING_TOKEN | refresh | recover" ;;
esac
