"""Third-party images through an ECR pull-through cache: the cache rules, the references, the pull grant.

Production tasks pull Grafana, Prometheus and the AWS CLI image from this account's registry
(`<registry>/docker-hub/...`, `<registry>/quay/...`, `<registry>/ecr-public/...`); ECR fetches a tag
from upstream once and serves it from then on, so Docker Hub's anonymous rate limit never stops a
task from starting. The references and prefixes come from `infra.image_refs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.image_refs import cached_reference, upstream_of

# What a task's execution role needs to pull through the cache: read the cached repositories, and
# create them and import the upstream image on a tag's first pull.
CACHE_PULL_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:BatchImportUpstreamImage",
    "ecr:CreateRepository",
    "ecr:GetDownloadUrlForLayer",
)


@dataclass(frozen=True)
class ImageSources:
    """Where the tasks pull each image from, what the execution role needs for it, what must exist first."""

    references: Mapping[str, str]  # image name -> reference
    pull_statements: tuple[iam.PolicyStatement, ...] = ()
    rules: tuple[pulumi.Resource, ...] = ()


def direct_sources(images: Mapping[str, str]) -> ImageSources:
    """The images pulled from their own registries (public images need no grant)."""
    return ImageSources(dict(images))


@dataclass(frozen=True)
class ImageCacheArgs:
    account: iam.AccountContext
    registry_host: str  # <account>.dkr.ecr.<region>.amazonaws.com
    images: Mapping[str, str]  # name -> upstream reference
    docker_hub_secret_arn: pulumi.Input[str] | None = None


class ImageCache(pulumi.ComponentResource):
    """One cache rule per upstream the images use; `references` maps each image name to its cached form."""

    def __init__(self, name: str, args: ImageCacheArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("iotfactory:image_cache:ImageCache", name, None, opts)
        upstreams = {u.prefix: u for ref in args.images.values() if (u := upstream_of(ref)) is not None}
        self.rules: list[aws.ecr.PullThroughCacheRule] = []
        for prefix, upstream in sorted(upstreams.items()):
            if upstream.needs_credentials and args.docker_hub_secret_arn is None:
                raise ValueError(f"the {upstream.url} cache rule needs a credential secret")
            self.rules.append(
                aws.ecr.PullThroughCacheRule(
                    f"{name}-{prefix}",
                    ecr_repository_prefix=prefix,
                    upstream_registry_url=upstream.url,
                    credential_arn=args.docker_hub_secret_arn if upstream.needs_credentials else None,
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        references = {image: cached_reference(ref, args.registry_host) for image, ref in args.images.items()}
        repositories = [args.account.arn("ecr", f"repository/{prefix}/*") for prefix in sorted(upstreams)]
        statements = (
            (
                iam.wildcard_resource(["ecr:GetAuthorizationToken"]),
                iam.allow(list(CACHE_PULL_ACTIONS), repositories, sid="PullThroughCache"),
            )
            if repositories
            else ()
        )
        self.sources = ImageSources(references, statements, tuple(self.rules))
        self.register_outputs({"references": references})
