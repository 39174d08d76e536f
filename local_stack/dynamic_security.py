"""The local broker's rights: Mosquitto's dynamic-security plugin, its generated file and its admin client.

Measured on Mosquitto 2.0.11 with certificate identities (notes in docs/local-stack.md):
- the plugin's ACLs apply per certificate CN; its per-client `clientid`, "disabled" flag and password
  are never checked (the broker skips authentication plugins for certificate identities);
- a CN that is not a client of the plugin connects but may do nothing (SUBACK and PUBACK refused);
- `deleteClient` over `$CONTROL/dynamic-security/v1` disconnects that client's open connection at
  once: with the CRL reload it is how a revoked certificate loses a session it already has;
- changing a role's ACLs, or adding a client to a group it is already in, disconnects the clients
  concerned, so roles are fixed at start (every possible site has its own) and only clients come
  and go at runtime;
- group membership must be written in the group's `clients` list: a `groups` key on a client
  entry is silently ignored when the file is loaded.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory_core.errors import OperationFailed, UsageError
from factory_core.fleet import GROUND_TRUTH_SEGMENT, SITE_INDEXES, TOPIC_ROOT, site_id
from local_stack.identities import ADMIN_IDENTITY, OBSERVER_IDENTITY, RULE_RUNNER_IDENTITY

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
PLUGIN_FILE = "mosquitto_dynamic_security.so"
# Debian puts it in the multiarch folder; a source build in /usr/local/lib.
PLUGIN_FOLDERS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib")
READERS_GROUP = "readers"
OBSERVERS_GROUP = "observers"
ADMINS_GROUP = "admins"
SERVICE_GROUPS = (READERS_GROUP, OBSERVERS_GROUP, ADMINS_GROUP)
LOAD_ERROR = "Error loading Dynamic security plugin config"


def site_group(site: str) -> str:
    return site


def site_role(site: str) -> str:
    return f"device-{site}"


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True, "priority": 0}


def _read_acls(root: str) -> list[dict[str, Any]]:
    kinds = ("subscribePattern", "publishClientReceive", "unsubscribePattern")
    return [_acl(kind, f"{root}/#") for kind in kinds]


def _roles(publish_prefix: str) -> list[dict[str, Any]]:
    control = f"{CONTROL_TOPIC}/#"
    root = f"{publish_prefix}{TOPIC_ROOT}"
    roles = [
        # The rule runner and observers read where devices write: behind the Basic Ingest prefix when
        # there is one (AWS lets nobody subscribe there; locally `tail` is worth the difference).
        {"rolename": READERS_GROUP, "acls": _read_acls(root)},
        {"rolename": OBSERVERS_GROUP, "acls": _read_acls(root)},
        {
            "rolename": ADMINS_GROUP,
            "acls": [
                _acl("publishClientSend", control),
                _acl("publishClientReceive", control),
                _acl("subscribePattern", control),
                _acl("unsubscribePattern", control),
            ],
        },
    ]
    for index in SITE_INDEXES:
        site = site_id(index)
        # The cloud's IoT policy: a device publishes its own site's telemetry and ground truth.
        roles.append(
            {
                "rolename": site_role(site),
                "acls": [
                    _acl("publishClientSend", f"{root}/{site}/#"),
                    _acl("publishClientSend", f"{root}/{GROUND_TRUTH_SEGMENT}/{site}/#"),
                ],
            }
        )
    return roles


@dataclass(frozen=True)
class BrokerAccess:
    """Every identity the broker knows at start: device CNs with their site, and the service CNs."""

    devices: Mapping[str, str] = field(default_factory=dict)  # CN -> site id
    readers: tuple[str, ...] = (RULE_RUNNER_IDENTITY,)
    observers: tuple[str, ...] = (OBSERVER_IDENTITY,)
    admins: tuple[str, ...] = (ADMIN_IDENTITY,)
    # Basic Ingest (factory_core.archive_modes): devices publish only behind the rule's prefix.
    publish_prefix: str = ""

    def document(self) -> dict[str, Any]:
        """The plugin's config file: default deny, one role and group per possible site, no passwords."""
        # group -> (its role, its members); the service groups' roles carry the group's name.
        groups: dict[str, tuple[str, list[str]]] = {
            READERS_GROUP: (READERS_GROUP, list(self.readers)),
            OBSERVERS_GROUP: (OBSERVERS_GROUP, list(self.observers)),
            ADMINS_GROUP: (ADMINS_GROUP, list(self.admins)),
        }
        for index in SITE_INDEXES:
            groups[site_group(site_id(index))] = (site_role(site_id(index)), [])
        for common_name, site in sorted(self.devices.items()):
            if site_group(site) not in groups or site_group(site) in SERVICE_GROUPS:
                raise ValueError(f"device {common_name}: {site!r} is not a site id (site-00..site-99)")
            groups[site_group(site)][1].append(common_name)
        clients = sorted({name for _role, names in groups.values() for name in names})
        return {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": False,
            },
            # Certificate clients need no password: the plugin never authenticates them.
            "clients": [{"username": name} for name in clients],
            "groups": [
                {
                    "groupname": group,
                    "roles": [{"rolename": role}],
                    "clients": [{"username": name} for name in names],
                }
                for group, (role, names) in groups.items()
            ],
            "roles": _roles(self.publish_prefix),
        }

    def write(self, path: Path) -> None:
        """Written whole, then renamed into place: the broker never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.document(), indent=1))
        os.chmod(temporary, 0o600)
        temporary.replace(path)


def find_plugin() -> Path:
    """The dynamic-security plugin shipped with Mosquitto, or UsageError naming the package."""
    for folder in PLUGIN_FOLDERS:
        candidate = Path(folder) / PLUGIN_FILE
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"Mosquitto's dynamic-security plugin ({PLUGIN_FILE}) is not installed in any of"
        f" {', '.join(PLUGIN_FOLDERS)}; install the `mosquitto` package (Debian ships it):"
        " scripts/ensure-deps.sh"
    )


class DynsecAdmin:
    """Runtime changes over `$CONTROL/dynamic-security/v1`, with the administrator's certificate.

    One short connection per batch of commands, one batch at a time: two connections with the same
    certificate would close each other (its CN is their client id), so nothing stays connected
    between calls and a lock keeps this process's calls apart.
    """

    def __init__(
        self, host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path, timeout_s: float = 10.0
    ) -> None:
        self.host = host
        self.port = port
        self._context = ssl.create_default_context(cafile=str(ca_file))
        self._context.load_cert_chain(str(cert_file), str(key_file))
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def admit(self, identities: Mapping[str, str]) -> None:
        """Make device CNs (CN -> site) clients of their site's group; ones that exist stay as they are.

        Adding an existing client to its group again would disconnect it, so an existing client is
        left alone (every client is created with its group, in one command).
        """
        self.create_clients({name: site_group(site) for name, site in identities.items()})

    def create_clients(self, groups: Mapping[str, str]) -> None:
        """CN -> group: create each client inside its group."""
        commands = [
            {"command": "createClient", "username": name, "groups": [{"groupname": group}]}
            for name, group in groups.items()
        ]
        self.run(commands, tolerated=("Client already exists",))

    def remove(self, common_names: Iterable[str]) -> None:
        """Delete clients: an open connection of theirs is closed at once; unknown ones are ignored."""
        commands = [{"command": "deleteClient", "username": name} for name in common_names]
        self.run(commands, tolerated=("Client not found",))

    def run(
        self, commands: Sequence[Mapping[str, Any]], tolerated: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Send the commands as one message and return the responses; OperationFailed on any error."""
        if not commands:
            return []
        with self._lock:
            responses = self._exchange({"commands": list(commands)})
        failures = [
            f"{response.get('command')}: {response['error']}"
            for response in responses
            if "error" in response and response["error"] not in tolerated
        ]
        if failures or len(responses) != len(commands):
            raise OperationFailed(
                "the broker's dynamic-security plugin refused: "
                + ("; ".join(failures) or f"{len(responses)} answers to {len(commands)} commands")
            )
        return responses

    def _exchange(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        # Imported here: the supervisor needs paho, not every verb that imports this package.
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=ADMIN_IDENTITY, protocol=mqtt.MQTTv311
        )
        client.tls_set_context(self._context)
        subscribed, answered = threading.Event(), threading.Event()
        answer: list[dict[str, Any]] = []

        def on_message(_client: Any, _userdata: Any, message: Any) -> None:
            answer.extend(json.loads(message.payload).get("responses", []))
            answered.set()

        client.on_connect = lambda c, *_: c.subscribe(RESPONSE_TOPIC, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = on_message
        try:
            client.connect(self.host, self.port, keepalive=30)
            client.loop_start()
            if not subscribed.wait(self.timeout_s):
                raise OperationFailed(
                    f"no answer from the broker's $CONTROL topic at {self.host}:{self.port}"
                )
            client.publish(CONTROL_TOPIC, json.dumps(request), qos=1)
            if not answered.wait(self.timeout_s):
                raise OperationFailed(
                    f"the broker's dynamic-security plugin did not answer within {self.timeout_s:g} s"
                )
        except (OSError, ssl.SSLError) as error:
            raise OperationFailed(f"could not reach the broker on {self.host}:{self.port}: {error}") from None
        finally:
            client.disconnect()
            client.loop_stop()
        return answer
