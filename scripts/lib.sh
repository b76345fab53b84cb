# Sourced by scripts/setup-*.sh: installs a missing system package with apt-get.
#   need NAME_OR_PATH PACKAGE...  — when the command NAME (or the file PATH) is
#   missing, install Debian's PACKAGEs (as root, else with `sudo -n`); exit 1 when
#   it is still missing afterwards. $SETUP names the calling script in messages.

need() {
  local want=$1
  shift
  if present "$want"; then return 0; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  echo "$SETUP: installing $* (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
    || true
  present "$want" || { echo "$SETUP: $want is missing and apt-get could not install $*" >&2; exit 1; }
}

present() {
  case $1 in
    */*) [ -x "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}
