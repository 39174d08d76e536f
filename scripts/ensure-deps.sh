# shellcheck shell=bash
# Installs what the project needs when it is missing; sourced by ./iotfactory and .ci/run.
# Every install step says what it installs and how big it is before it starts, and how long it
# took when it ends: a first run is never a silent minute.
# python3: Debian's CPython stands in for the simulator image's base Python in
# tests/test_image_assembly.py (a pyenv or uv Python under /root is out of the image user's reach).
APT_PACKAGES=(mosquitto mosquitto-clients prometheus prometheus-alertmanager python3)
# chromium: the report is tested in a real browser (tests/test_report.py). ~300 MB and about a
# minute of apt, so only the tests' set installs it: a first `up` never waits for a browser.
TEST_APT_PACKAGES=(chromium)

# The locked Python packages come in three sets, each holding the one before it:
#   local  the project's dependencies: the local stack, the simulator, `dashboards`
#   cloud  + the `cloud` group: Pulumi and its providers, for any verb on a cloud stack
#   all    + every group (dev: pytest, moto, linters): what the tests need
# `--inexact` keeps what a larger set installed: going from `test` to `up --stack local` must not
# uninstall Pulumi only to install it again on the next `test`.
PYTHON_SETS=(local cloud all)
declare -gA UV_SYNC_FLAGS=(
  [local]="--inexact --no-default-groups"
  [cloud]="--inexact --no-default-groups --group cloud"
  [all]="--all-groups"
)
declare -gA PYTHON_SET_WHAT=(
  [local]="the Python packages of the local stack and the simulator"
  [cloud]="the cloud stacks' Python packages (Pulumi and its AWS providers)"
  [all]="every Python package (the tests also need the cloud and dev groups)"
)

_say() { printf '%s\n' "$*" >&2; }

# Runs one install step between a start line and an end line with its seconds. On a terminal the
# tool's own progress shows in between; otherwise the two lines are all there is.
_step() {  # _step WHAT DETAILS COMMAND...  (DETAILS, for the start line only, may be empty)
  local what=$1 began=$SECONDS
  _say "installing $what${2:+: $2}..."
  shift 2
  if ! "$@"; then
    _say "failed after $((SECONDS - began)) s: installing $what"
    return 1
  fi
  _say "installed $what in $((SECONDS - began)) s"
}

# The stamp that says a set was synced; .venv/.synced (everything) is the one `uv sync` users touch.
_python_stamp() { if [ "$1" = all ]; then echo .venv/.synced; else echo ".venv/.synced-$1"; fi; }

_python_set_synced() {  # true when this set, or one holding it, was synced after uv.lock last changed
  local set stamp reached=''
  [ -x .venv/bin/python ] || return 1
  for set in "${PYTHON_SETS[@]}"; do
    [ "$set" = "$1" ] && reached=1
    [ -n "$reached" ] || continue
    stamp=$(_python_stamp "$set")
    if [ -f "$stamp" ] && [ ! uv.lock -nt "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
      return 0
    fi
  done
  return 1
}

# "N MB" of the wheels uv.lock has for these packages on this machine (or nothing if unknown):
# the size a first run downloads, before uv says it.
_wheel_size() {  # _wheel_size CPYTHON_TAG NAME...
  python3 - "$@" 2>/dev/null <<'PY' || true
import platform, sys, tomllib
python_tag, names = sys.argv[1], set(sys.argv[2:])
machine = platform.machine()
with open("uv.lock", "rb") as lock:
    packages = tomllib.load(lock)["package"]

def fits(filename: str) -> bool:
    tags = filename.removesuffix(".whl").split("-")[-3:]
    platform_fits = tags[2] == "any" or (machine in tags[2] and "linux" in tags[2])
    return platform_fits and (tags[0].startswith("py3") or python_tag in tags[0] or tags[1] == "abi3")

total = 0
for package in packages:
    if package["name"] in names:
        sizes = [w.get("size", 0) for w in package.get("wheels", []) if fits(w["url"].rsplit("/", 1)[-1])]
        total += max(sizes, default=package.get("sdist", {}).get("size", 0))
if total:
    print(f"{max(1, round(total / 1e6))} MB")
PY
}

_uv_quiet() { [ -t 2 ] || echo --quiet; }

ensure_python_packages() {  # ensure_python_packages local|cloud|all
  local set=$1 flags plan count download size details
  _python_set_synced "$set" && return 0
  read -ra flags <<<"${UV_SYNC_FLAGS[$set]}"
  # uv's own plan: what it would install and download (a tenth of a second).
  plan=$("${UV[@]}" sync --frozen "${flags[@]}" --dry-run 2>&1) || plan=
  local names=()
  mapfile -t names < <(printf '%s\n' "$plan" | sed -n 's/^ [+~] \([^=]*\)==.*/\1/p')
  count=${#names[@]}
  download=$(printf '%s\n' "$plan" | sed -n 's/^Would download \([0-9]*\) package.*/\1/p')
  local python_tag
  python_tag=$(printf '%s\n' "$plan" | sed -n 's/^Using CPython \([0-9]*\)\.\([0-9]*\).*/cp\1\2/p' | head -1)
  [ -n "$python_tag" ] || python_tag=$(python3 -c 'import sys; print(f"cp3{sys.version_info[1]}")' 2>/dev/null)
  # --compile-bytecode: PYTHONDONTWRITEBYTECODE would otherwise make every pulumi_aws import slow.
  local sync=("${UV[@]}" sync --frozen "${flags[@]}" --compile-bytecode)
  if [ "$count" -eq 0 ]; then  # installed already, only never stamped: nothing worth announcing
    "${sync[@]}" --quiet
  else
    size=$(_wheel_size "$python_tag" "${names[@]}")
    details="$count packages${size:+, ~$size of wheels}, ${download:-0} to download"
    # shellcheck disable=SC2046  # _uv_quiet is one word or none
    _step "${PYTHON_SET_WHAT[$set]}" "$details (uv sync ${UV_SYNC_FLAGS[$set]})" "${sync[@]}" $(_uv_quiet)
  fi
  touch "$(_python_stamp "$set")"
}

# Which set a ./iotfactory command needs, by cli.py's rules (tests/test_first_run.py keeps the two
# in step): `test` needs everything; any verb on a cloud stack (dev, prod, or one with a
# Pulumi.<name>.yaml) needs the cloud group; the rest runs on the local set.
python_set_for() {  # python_set_for ARGS...
  [ "${1:-}" = test ] && { echo all; return; }
  local command=${1:-} stack='' archive=''
  [ $# -gt 0 ] && shift
  while [ $# -gt 0 ]; do
    case $1 in
      --help) echo local; return ;;
      --stack | -s) stack=${2:-}; [ $# -gt 1 ] && shift ;;
      --stack=*) stack=${1#--stack=} ;;
      -s?*) stack=${1#-s} ;;
      --archive | --archive=*) archive=1 ;;
    esac
    shift
  done
  # The verbs whose --stack defaults to dev; `--archive` reads any archive with the local tools.
  case $command in
    preview | bootstrap | doctor | drift | cost) : "${stack:=dev}" ;;
    verify | query | report | score) [ -n "$archive" ] && stack=local ;;
    dashboards) stack=local ;;
  esac
  case ${stack:-local} in
    local) echo local ;;
    dev | prod) echo cloud ;;
    *) if [ -f "Pulumi.$stack.yaml" ]; then echo cloud; else echo local; fi ;;
  esac
}

_apt_download_size() {  # "N MB" apt would download for these packages, or nothing
  "$@" --print-uris -qq 2>/dev/null | awk '{ total += $3 } END { if (total) printf "%d MB", (total + 999999) / 1e6 }'
}

ensure_system_packages() {  # ensure_system_packages local|cloud|all
  local missing=()
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
  { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
  { command -v prometheus-alertmanager >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1; } || missing+=(prometheus-alertmanager)
  [ -x /usr/bin/python3 ] || missing+=(python3)
  if [ "${1:-all}" = all ]; then
    command -v chromium >/dev/null 2>&1 || missing+=("${TEST_APT_PACKAGES[@]}")
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  install_system_packages "${missing[@]}"
}

install_system_packages() {  # install_system_packages MISSING...
  # The whole list (apt skips what is there), plus a test-only package when it is one missing.
  local packages=("${APT_PACKAGES[@]}") package
  for package in "$@"; do
    [[ " ${APT_PACKAGES[*]} " == *" $package "* ]] || packages+=("$package")
  done
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
      _say "error: missing $*; install them with: apt-get install ${packages[*]}"
      exit 2
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _say "error: missing $* and no apt-get; install mosquitto, mosquitto-clients, prometheus, prometheus-alertmanager and python3 (and chromium, for the tests) with your package manager"
    exit 2
  fi
  _step "the apt package lists" "apt-get update, for $*" "${sudo[@]}" apt-get update -qq
  # apt starts nothing in containers; on a systemd host, keep the packaged services from taking
  # the ports the stack uses.
  local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends)
  local size
  size=$(_apt_download_size "${install[@]}" "${packages[@]}")
  local details="apt-get${size:+, $size to download}"
  if [ -t 2 ]; then
    _step "${packages[*]}" "$details" "${install[@]}" -q "${packages[@]}"
  else
    _step "${packages[*]}" "$details" "${install[@]}" -qq "${packages[@]}" >/dev/null
  fi
}

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=(uv); return 0; fi
  if python3 -m uv --version >/dev/null 2>&1; then UV=(python3 -m uv); return 0; fi
  local size
  size=$(_wheel_size "$(python3 -c 'import sys; print(f"cp3{sys.version_info[1]}")')" uv)
  _step uv "pip${size:+, ~$size}" _pip_install_uv
  # `python3 -m uv` works whether or not pip's script folder is on PATH.
  UV=(python3 -m uv)
}

_pip_install_uv() {
  # shellcheck disable=SC2046  # _uv_quiet is one word or none
  python3 -m pip install $(_uv_quiet) --disable-pip-version-check uv 2>/dev/null \
    || python3 -m pip install $(_uv_quiet) --disable-pip-version-check --user --break-system-packages uv
}

ensure_deps() {  # ensure_deps local|cloud|all
  ensure_system_packages "${1:-all}"
  ensure_uv
  ensure_python_packages "${1:-all}"
}
