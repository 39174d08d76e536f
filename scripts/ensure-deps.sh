# Installs what the project needs when it is missing; sourced by ./iotfactory and .ci/run.
# python3: Debian's CPython stands in for the simulator image's base Python in
# tests/test_image_assembly.py (a pyenv or uv Python under /root is out of the image user's reach).
APT_PACKAGES=(mosquitto mosquitto-clients prometheus prometheus-alertmanager python3)

_say() { printf '%s\n' "$*" >&2; }

ensure_system_packages() {
  local missing=()
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
  { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
  { command -v prometheus-alertmanager >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1; } || missing+=(prometheus-alertmanager)
  [ -x /usr/bin/python3 ] || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
      _say "error: missing ${missing[*]}; install them with: apt-get install ${APT_PACKAGES[*]}"
      exit 2
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _say "error: missing ${missing[*]} and no apt-get; install mosquitto, mosquitto-clients, prometheus, prometheus-alertmanager and python3 with your package manager"
    exit 2
  fi
  _say "installing ${missing[*]} (apt-get)..."
  "${sudo[@]}" apt-get update -qq
  # apt starts nothing in containers; on a systemd host, keep the packaged services from taking
  # the ports the stack uses.
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${APT_PACKAGES[@]}" >/dev/null
}

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=(uv); return 0; fi
  if python3 -m uv --version >/dev/null 2>&1; then UV=(python3 -m uv); return 0; fi
  _say "installing uv (pip)..."
  python3 -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages uv >/dev/null
  # `python3 -m uv` works whether or not pip's script folder is on PATH.
  UV=(python3 -m uv)
}

ensure_venv() {
  # --compile-bytecode: PYTHONDONTWRITEBYTECODE would otherwise make every pulumi_aws import slow.
  if [ ! -x .venv/bin/python ] || [ uv.lock -nt .venv/.synced ] || [ pyproject.toml -nt .venv/.synced ]; then
    _say "syncing the Python environment (uv sync --frozen)..."
    "${UV[@]}" sync --frozen --compile-bytecode --quiet
    touch .venv/.synced
  fi
}

ensure_deps() {
  ensure_system_packages
  ensure_uv
  ensure_venv
}
