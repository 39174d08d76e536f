"""Who connects to the local broker: the certificate common names (CN) of every identity.

The broker takes a client's CN as its user name and as its client id (`use_identity_as_username`
plus `use_username_as_clientid`), so a CN is also the one MQTT client id its certificate may use:

- devices: one certificate per simulator connection, CN `<generation>-<site>-c<NN>` (what the
  connection planner names a connection when the client-id prefix is `<generation>-`), so the two
  generations of a rotation never share a client id and the old one can be cut without touching
  the new one;
- the rule runner: `rule-runner`, never rotated, so its persistent session (keyed on the client id)
  survives every restart and rotation;
- observers: `observer` (a fixed read-only identity for `mosquitto_sub`), and `observer-<hex>`, one
  per `tail`, so two people watching never close each other's connection;
- the supervisor's administrator of the dynamic-security plugin: `iotfactory-admin`.
"""

from __future__ import annotations

import re

from factory_core.fleet import site_id

RULE_RUNNER_IDENTITY = "rule-runner"
OBSERVER_IDENTITY = "observer"
OBSERVER_PREFIX = "observer-"
ADMIN_IDENTITY = "iotfactory-admin"

# What a CN may hold: it becomes an MQTT user name and client id, a dynamic-security client name
# and a file name. `/ + #` would turn it into a topic level or wildcard in any ACL that substitutes
# it (Mosquitto's own pattern ACLs refuse `+`/`#` user names only since CVE-2017-7650), so only
# these characters are issued; 64 is X.509's upper bound for a common name.
_COMMON_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_common_name(common_name: str) -> str:
    """The CN unchanged, or ValueError naming what is wrong with it."""
    if not _COMMON_NAME.match(common_name):
        raise ValueError(
            f"certificate common name {common_name!r} is not allowed: use 1-64 letters, digits, '.', '_' or"
            " '-' (it becomes the MQTT client id; '/', '+' and '#' would be read as topic syntax)"
        )
    return common_name


def device_prefix(generation: str) -> str:
    """The client-id prefix a simulator of this certificate generation connects with."""
    return f"{generation}-"


def device_identity(generation: str, site_index: int, connection: int) -> str:
    """The CN (= client id) of one simulator connection; the connection planner names it the same."""
    return f"{device_prefix(generation)}{site_id(site_index)}-c{connection:02d}"
