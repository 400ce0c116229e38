# Sourced by scripts/test and scripts/quickstart: installs, with apt-get,
# the Debian packages whose commands are missing.
#
#   ensure_tools redis-server:redis-server cc:gcc ...
#
# Each argument is COMMAND:PACKAGE; nothing is installed when every command
# is found. Needs root or sudo only when something is missing.
ensure_tools() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  printf '==> installing %s\n' "${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
