"""The simulator image: an ECR repository (immutable tags, scan on push, lifecycle) and its build.

The image is built by pulumi-docker from `simulator/Dockerfile` with the repository root as the
context and referenced by digest, so a code change rolls the simulators on the next `up`. Tags are
immutable, so the tag is a digest of everything pulumi-docker rebuilds on: the build context (after
`.dockerignore`), the Dockerfile and every build setting (platform, paths). A rebuild therefore
always pushes under a new tag; an unchanged build keeps its tag and is not pushed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker

PLATFORM = "linux/amd64"
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<name>[^@:]+)[@:]"
)


@dataclass(frozen=True)
class SimulatorImageArgs:
    repository_name: str  # e.g. "iotfactory-dev/simulator"
    context_dir: Path
    dockerfile: Path
    force_delete: bool = False
    prebuilt_image: str | None = None  # `<repo>@sha256:<digest>`: skip the build, use this image
    keep_tagged_images: int = 20
    untagged_expire_days: int = 7


class SimulatorImage(pulumi.ComponentResource):
    """ECR repository plus the simulator image pushed to it; `image_ref` is `<repo>@sha256:...`."""

    def __init__(
        self, name: str, args: SimulatorImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:image:SimulatorImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository = aws.ecr.Repository(
            name,
            name=args.repository_name,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "AES256"}],
            force_delete=args.force_delete,
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            repository=self.repository.name,
            policy=json.dumps(lifecycle_policy(args.keep_tagged_images, args.untagged_expire_days)),
            opts=child,
        )
        self.repository_url: pulumi.Output[str] = self.repository.repository_url
        self.repository_arn: pulumi.Output[str] = self.repository.arn
        # Repositories the simulators' execution role may pull from.
        self.pull_repository_arns: list[pulumi.Input[str]] = [self.repository.arn]

        if args.prebuilt_image:
            self.image_ref: pulumi.Output[str] = pulumi.Output.from_input(args.prebuilt_image)
            self.tag = None
        else:
            settings = build_settings(args.context_dir, args.dockerfile)
            self.tag = build_tag(args.context_dir, args.dockerfile, settings)
            credentials = aws.ecr.get_authorization_token_output(
                registry_id=self.repository.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
            )
            image = docker.Image(
                name,
                # Exactly the settings the tag was computed from: nothing reaches the build unhashed.
                build=docker.DockerBuildArgs(**settings),
                image_name=pulumi.Output.concat(self.repository.repository_url, ":", self.tag),
                registry=docker.RegistryArgs(
                    server=self.repository.repository_url,
                    username=credentials.user_name,
                    password=pulumi.Output.secret(credentials.password),
                ),
                opts=child,
            )
            self.image_ref = image.repo_digest
        self.register_outputs({"repositoryUrl": self.repository_url, "imageRef": self.image_ref})


def lifecycle_policy(keep_tagged_images: int, untagged_expire_days: int) -> dict[str, object]:
    """Expire untagged layers after a week; keep the newest N images (enough to roll back)."""
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"expire untagged images after {untagged_expire_days} days",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": untagged_expire_days,
                },
                "action": {"type": "expire"},
            },
            {
                # A rule on tagStatus "any" must have the highest priority number (ECR evaluates it last).
                "rulePriority": 2,
                "description": f"keep the newest {keep_tagged_images} images",
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": keep_tagged_images,
                },
                "action": {"type": "expire"},
            },
        ]
    }


def build_settings(context_dir: Path, dockerfile: Path) -> dict[str, str]:
    """The `DockerBuildArgs` of the simulator image (pulumi-docker rebuilds when any of them changes)."""
    return {
        "context": _relative_to_cwd(context_dir),
        "dockerfile": _relative_to_cwd(dockerfile),
        "platform": PLATFORM,
    }


def build_tag(context_dir: Path, dockerfile: Path, settings: dict[str, str]) -> str:
    """`sim-<24 hex>` over the context digest and the build settings: a different build, a different tag.

    ECR refuses to move an immutable tag, so a rebuild under an old tag (say, after only the
    platform changed) would fail the push; a tag derived from every input cannot collide.
    """
    digest = hashlib.sha256(build_context_digest(context_dir, dockerfile).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return f"sim-{digest.hexdigest()[:24]}"


def ecr_repository_arn(image_ref: str, partition: str = "aws") -> str | None:
    """ARN of the ECR repository an image reference points into, or None for other registries."""
    match = _ECR_IMAGE.match(image_ref)
    if not match:
        return None
    return f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['name']}"


def _relative_to_cwd(path: Path) -> str:
    # pulumi-docker stores these paths in the state; relative ones stay the same on every machine
    # (Pulumi runs the program from infra/), so a checkout elsewhere does not trigger a rebuild.
    return os.path.relpath(path, Path.cwd())


# Build-context digest. It must change whenever pulumi-docker's own context hash changes (that is
# when it rebuilds and pushes), or the push would reuse an immutable tag. So it follows Docker's
# rules: `<Dockerfile>.dockerignore` next to the Dockerfile wins over `<context>/.dockerignore`;
# patterns match a path or any of its parent folders; the last matching pattern wins; `!` re-includes.


ASSUMED_IGNORED = (".git", ".venv", "**/__pycache__", ".pytest_cache", ".ruff_cache", ".factory", ".pulumi")


@dataclass(frozen=True)
class _IgnorePattern:
    regex: re.Pattern[str]
    negated: bool
    literal_prefix: str


def _compile(pattern: str) -> _IgnorePattern:
    negated = pattern.startswith("!")
    text = os.path.normpath(pattern[1:] if negated else pattern).lstrip("/")
    regex = ""
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("**", index):
            index += 2
            if text.startswith("/", index):
                index += 1
                regex += "(?:.*/)?"
            else:
                regex += ".*"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[":
            end = text.find("]", index)
            if end == -1:
                regex += re.escape(char)
            else:
                regex += "[" + text[index + 1 : end].replace("\\", "\\\\") + "]"
                index = end
        else:
            regex += re.escape(char)
        index += 1
    literal = re.split(r"[*?\[]", text, maxsplit=1)[0]
    return _IgnorePattern(re.compile(f"^{regex}$"), negated, literal)


def read_ignore_patterns(context_dir: Path, dockerfile: Path) -> list[str] | None:
    """Patterns of the ignore file Docker would use, or None when there is none."""
    for candidate in (Path(f"{dockerfile}.dockerignore"), context_dir / ".dockerignore"):
        if candidate.is_file():
            lines = (line.strip() for line in candidate.read_text(encoding="utf-8").splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    return None


class _ContextFilter:
    def __init__(self, patterns: list[str]) -> None:
        self._patterns = [_compile(pattern) for pattern in patterns]
        self._reincludes = [pattern for pattern in self._patterns if pattern.negated]

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
        result = False
        for pattern in self._patterns:
            if any(pattern.regex.match(candidate) for candidate in candidates):
                result = not pattern.negated
        return result

    def may_reinclude_below(self, directory: str) -> bool:
        return any(
            not pattern.literal_prefix
            or pattern.literal_prefix.startswith(f"{directory}/")
            or f"{directory}/".startswith(pattern.literal_prefix.rstrip("/") + "/")
            for pattern in self._reincludes
        )


def build_context_digest(context_dir: Path, dockerfile: Path) -> str:
    """sha256 over every file Docker sends as the build context (path, mode, content) and the Dockerfile."""
    context_dir = context_dir.resolve()
    patterns = read_ignore_patterns(context_dir, dockerfile)
    if patterns is None:
        # Hashing .venv and .git takes seconds; assume them ignored and say what to fix.
        pulumi.log.warn(
            f"no .dockerignore for {dockerfile.name} in {context_dir}: Docker sends .git and .venv as "
            "build context, and a commit then rebuilds the image under an existing immutable tag; "
            "add a .dockerignore listing at least: " + ", ".join(ASSUMED_IGNORED)
        )
        patterns = list(ASSUMED_IGNORED)
    context_filter = _ContextFilter(patterns)
    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for root, directories, names in os.walk(context_dir):
        base = Path(root).relative_to(context_dir).as_posix()
        prefix = "" if base == "." else f"{base}/"
        directories[:] = sorted(
            directory
            for directory in directories
            if not (
                context_filter.excluded(prefix + directory)
                and not context_filter.may_reinclude_below(prefix + directory)
            )
        )
        files.extend((prefix + name, Path(root) / name) for name in names)
    for relative, path in sorted(files):
        if context_filter.excluded(relative):
            continue
        info = path.lstat()
        digest.update(f"{relative}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(os.readlink(path).encode())
        elif stat.S_ISREG(info.st_mode):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    dockerfile_bytes = dockerfile.read_bytes() if dockerfile.is_file() else b""
    digest.update(b"\0dockerfile\0" + hashlib.sha256(dockerfile_bytes).digest())
    return digest.hexdigest()
