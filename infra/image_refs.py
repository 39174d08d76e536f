"""Container image references, and where an ECR pull-through cache serves each one from (pure, no Pulumi).

A cache rule maps a repository prefix of this account's registry to one upstream registry:
`<account>.dkr.ecr.<region>.amazonaws.com/docker-hub/grafana/grafana-oss:11.4.0` is pulled from
Docker Hub once and then served by ECR. Only the upstreams below are cached; an image from any
other registry is used as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:
    prefix: str  # ECR repository prefix of the cache rule
    url: str  # the rule's upstream registry URL
    needs_credentials: bool  # ECR requires a credential secret for this upstream


UPSTREAMS: Mapping[str, Upstream] = {
    "docker.io": Upstream("docker-hub", "registry-1.docker.io", needs_credentials=True),
    "quay.io": Upstream("quay", "quay.io", needs_credentials=False),
    "public.ecr.aws": Upstream("ecr-public", "public.ecr.aws", needs_credentials=False),
}
_DOCKER_HUB_ALIASES = {"registry-1.docker.io", "index.docker.io", "docker.io"}


def split_reference(reference: str) -> tuple[str, str]:
    """(registry, path with tag or digest): `grafana/grafana:1` -> (docker.io, grafana/grafana:1)."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", reference
    if registry in _DOCKER_HUB_ALIASES:
        registry = "docker.io"
        name = path.split("@", 1)[0].split(":", 1)[0]
        if "/" not in name:  # an official image: `python` is `library/python`
            path = f"library/{path}"
    return registry, path


def upstream_of(reference: str) -> Upstream | None:
    return UPSTREAMS.get(split_reference(reference)[0])


def cached_reference(reference: str, registry_host: str) -> str:
    """The reference through this account's cache, or unchanged when its registry is not cached."""
    registry, path = split_reference(reference)
    upstream = UPSTREAMS.get(registry)
    return reference if upstream is None else f"{registry_host}/{upstream.prefix}/{path}"


def needs_docker_hub_credentials(images: Mapping[str, str]) -> list[str]:
    """Names of the images whose upstream needs credentials for a cache rule (Docker Hub)."""
    return [
        name for name, ref in images.items() if (upstream := upstream_of(ref)) and upstream.needs_credentials
    ]
