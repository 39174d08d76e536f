"""The simulator image assembled without Docker, from simulator/Dockerfile and .dockerignore as they are.

Every stage gets a folder standing for its filesystem. `COPY` takes files from the build context
(the `.dockerignore` rules of `infra/components/image.py`, the same ones the image tag hashes) or
from an earlier stage; `ENV`, `WORKDIR` and `USER` are followed; `RUN` commands are executed when
they are the project's own tooling (`uv export`, `uv pip install`, `python -m venv`,
`python -m compileall`) and otherwise recorded as not reproduced, which is refused for any command
that touches what the assembly does reproduce. Stand-ins, and nothing else: the official python
base image is a host CPython of the same minor version behind `/usr/local/bin/python`, the builder's
`pip install uv==X` is this environment's uv (refused unless it is version X), and uv's cache
stands in for the package index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import support_dockerfile as df

from infra.components.image import _ContextFilter, read_ignore_patterns

# What python:3.11-slim sets that the simulator can notice (`docker inspect`): PATH and the locale.
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
BASE_PYTHON_DIR = "/usr/local/bin"  # where the official python images keep `python`
UV_PASSTHROUGH = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")
TOOL_TIMEOUT_S = 300


class AssemblyError(Exception):
    """The image cannot be assembled as its Dockerfile says; the message names the step and the fix."""


class StageFs:
    """A stage's filesystem: its own folder over the base image stand-in (first match wins)."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root, self.base = root, base

    def host(self, image_path: str) -> Path:
        relative = os.path.normpath(image_path).lstrip("/")
        own, below = self.root / relative, self.base / relative
        return below if not os.path.lexists(own) and os.path.lexists(below) else own

    def search_path(self, image_path_list: str) -> str:
        dirs = [d for d in image_path_list.split(":") if d]
        return ":".join(str(layer / d.lstrip("/")) for d in dirs for layer in (self.root, self.base))

    def environment(self, image_env: Mapping[str, str]) -> dict[str, str]:
        """The environment with image paths turned into host paths of this filesystem."""
        mapped = {}
        for name, value in image_env.items():
            if name == "PATH":
                mapped[name] = self.search_path(value)
            elif value.startswith("/") and "\n" not in value:
                mapped[name] = str(self.host(value))
            else:
                mapped[name] = value
        return mapped

    def map_word(self, word: str) -> str:
        if word.startswith("/"):
            return str(self.host(word))
        name, equals, value = word.partition("=")
        if word.startswith("--") and equals and value.startswith("/"):
            return f"{name}={self.host(value)}"
        return word


@dataclass(frozen=True)
class AssembledImage:
    fs: StageFs
    workdir: str
    env: Mapping[str, str]  # the image's ENV, image paths as the Dockerfile wrote them
    user: tuple[int, int]
    home: str
    entrypoint: tuple[str, ...]
    healthcheck: df.HealthCheck | None
    stop_signal: int
    not_reproduced: tuple[str, ...]  # final-stage RUN commands run only by a real `docker build`
    stages: Mapping[str, StageFs]  # every stage's filesystem by name (the final one too)

    def host(self, image_path: str) -> Path:
        return self.fs.host(image_path)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What a process in the container sees: the image's ENV, HOME, then the task's own variables."""
        return self.fs.environment({**self.env, "HOME": self.home, **(extra or {})})

    def popen(
        self, argv: Sequence[str], extra_env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.Popen[str]:
        """Start a process the way the container runtime does: its user, its WORKDIR, only its env."""
        uid, gid = self.user
        return subprocess.Popen(
            list(argv), cwd=self.host(self.workdir), env=self.environment(extra_env),
            user=uid, group=gid, extra_groups=[], text=True, **kwargs,
        )

    def run(
        self, argv: Sequence[str], extra_env: Mapping[str, str] | None = None, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        process = self.popen(argv, extra_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)

    def check_health(self, extra_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One run of the HEALTHCHECK command, with its own timeout (exit 0 = healthy)."""
        if self.healthcheck is None:
            raise AssemblyError("the image has no HEALTHCHECK")
        try:
            return self.run(self.healthcheck.argv, extra_env, timeout_s=self.healthcheck.timeout_s)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(self.healthcheck.argv), -1, "", "health check timed out")


@dataclass
class _StageState:
    stage: df.Stage
    fs: StageFs
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_IMAGE_ENV))
    workdir: str = "/"
    not_reproduced: list[str] = field(default_factory=list)


class ImageAssembler:
    """Assembles images into `workspace` (world-readable: the image user must reach it)."""

    def __init__(self, workspace: Path, uv: Path) -> None:
        self.workspace = workspace
        self.uv = uv
        self.uv_version = _run([str(uv), "--version"]).stdout.split()[1]
        self.uv_cache = _run([str(uv), "cache", "dir"]).stdout.strip()
        self._count = 0

    def assemble(self, dockerfile: Path, context_dir: Path) -> AssembledImage:
        stages = df.parse_stages(dockerfile)
        final = stages[-1]
        if len({stage.base for stage in stages}) != 1:
            raise AssemblyError("stages on different base images are not modelled")
        uid, gid = df.user(final)
        base = self._base_stand_in(df.python_version(final.base), uid, gid)
        context = BuildContext(context_dir, dockerfile)
        self._count += 1
        built: dict[int, _StageState] = {}
        for stage in stages:
            if stage is final:
                root = self.workspace / f"image-{self._count}"
            else:
                root = self.workspace / "stages" / self._stage_key(stage, context, base)
                if (root / ".complete").is_file():
                    built[stage.index] = _StageState(stage, StageFs(root, base))
                    continue
                shutil.rmtree(root, ignore_errors=True)
            state = _StageState(stage, StageFs(_make_dir(root), base))
            self._build(state, stages, built, context, is_final=stage is final)
            built[stage.index] = state
            if stage is not final:
                (root / ".complete").touch()
        image = built[final.index]
        return AssembledImage(
            fs=image.fs,
            workdir=image.workdir,
            env=image.env,
            user=(uid, gid),
            home=_home_of(final, uid),
            entrypoint=df.entrypoint(final),
            healthcheck=df.healthcheck(final),
            stop_signal=df.stop_signal(final),
            not_reproduced=tuple(image.not_reproduced),
            stages={state.stage.label: state.fs for state in built.values()},
        )

    # --- stages ----------------------------------------------------------------------------------

    def _build(
        self, state: _StageState, stages: list[df.Stage], built: dict[int, _StageState],
        context: BuildContext, *, is_final: bool,
    ) -> None:
        reproduced = _reproduced_paths(state.stage) if is_final else ()
        for command in state.stage.instructions:
            keyword = command.cmd
            if keyword == "ENV":
                state.env.update(df.env_pairs(command, state.env))
            elif keyword == "WORKDIR":
                state.workdir = os.path.join(state.workdir, df.expand(command.value[0], state.env))
                _make_dir(state.fs.host(state.workdir))
            elif keyword == "COPY":
                self._copy(state, command, stages, built, context)
            elif keyword == "RUN":
                for words in df.shell_commands(command):
                    self._run_step(state, words, reproduced)
            elif keyword == "USER" and not is_final:
                raise AssemblyError(f"{state.stage.label}: USER before the final stage is not modelled")
            elif keyword in ("ARG", "ADD", "VOLUME", "SHELL", "ONBUILD"):
                raise AssemblyError(f"{command.original!r}: {keyword} is not modelled by the assembly")
            # LABEL, EXPOSE, USER, HEALTHCHECK, STOPSIGNAL, ENTRYPOINT, CMD: read from the final stage.

    def _copy(
        self, state: _StageState, command: df.dockerfile.Command, stages: list[df.Stage],
        built: dict[int, _StageState], context: BuildContext,
    ) -> None:
        unknown = [item for item in command.flags if not item.startswith("--from=")]
        if unknown:
            raise AssemblyError(f"{command.original!r}: COPY {' '.join(unknown)} is not modelled")
        *sources, destination = (df.expand(word, state.env) for word in command.value)
        destination = os.path.join(state.workdir, destination)
        into_dir = destination.endswith("/") or len(sources) > 1
        origin = df.flag(command, "from")
        for source in sources:
            if any(char in source for char in "*?["):
                raise AssemblyError(f"{command.original!r}: wildcards in COPY sources are not modelled")
            if origin is None:
                entries = context.entries(source)
                if not entries:
                    raise AssemblyError(
                        f"{command.original!r}: {source} is not in the build context"
                        f" ({context.ignore_file_name} keeps it out, or it does not exist)"
                    )
                source_is_dir = (context.root / source.strip("/")).is_dir()
            else:
                start = built[df.stage_by_reference(stages, origin).index].fs.host(source)
                entries, source_is_dir = _tree(start), start.is_dir()
                if not entries:
                    raise AssemblyError(f"{command.original!r}: {source} does not exist in stage {origin}")
            for path, inside in entries:
                # A folder's contents go into the destination; a file goes into it or becomes it.
                target = os.path.join(destination, inside) if source_is_dir or into_dir else destination
                _copy_entry(path, state.fs.host(target))

    def _run_step(self, state: _StageState, words: list[str], reproduced: Sequence[str]) -> None:
        program = os.path.basename(words[0])
        if program in ("pip", "pip3") and words[1:2] == ["install"]:
            self._provide_uv(state, words)
            return
        if program == "rm" and set(words[1:]) - {"-f"} and all(
            word == "-f" or word.startswith("/") for word in words[1:]
        ):
            for word in words[1:]:
                if word != "-f":  # files of this stage only, never the base stand-in's
                    (state.fs.root / os.path.normpath(word).lstrip("/")).unlink(missing_ok="-f" in words)
            return
        runnable = (program == "uv" and words[1:2] in (["export"], ["pip"], ["venv"])) or (
            program.startswith("python") and words[1:3] in (["-m", "venv"], ["-m", "compileall"])
        )
        if runnable and not df.uses_shell_syntax(words):
            self._execute(state, words)
            return
        command = " ".join(words)
        touched = [path for path in reproduced for word in words if _under(word, path)]
        if not reproduced or touched:
            raise AssemblyError(
                f"{state.stage.label}: cannot reproduce `{command[:120]}`"
                + (f", and it changes {touched[0]}" if touched else "")
                + "; teach tests/support_image.py what it does"
            )
        state.not_reproduced.append(command)

    def _provide_uv(self, state: _StageState, words: list[str]) -> None:
        requirements = [word for word in words[2:] if not word.startswith("-")]
        versions = {req.partition("==")[2] for req in requirements if req.startswith("uv==")}
        if len(requirements) != 1 or len(versions) != 1:
            raise AssemblyError(f"`{' '.join(words)}`: only `pip install uv==X` is modelled")
        (wanted,) = versions
        if wanted != self.uv_version:
            raise AssemblyError(
                f"the builder installs uv {wanted} but this environment has uv {self.uv_version};"
                f" pin uv=={wanted} in pyproject.toml's dev group (uv export output depends on it)"
            )
        target = state.fs.root / BASE_PYTHON_DIR.lstrip("/") / "uv"
        _make_dir(target.parent)
        target.symlink_to(self.uv)

    def _execute(self, state: _StageState, words: list[str]) -> None:
        env = state.fs.environment({**state.env, "HOME": "/root"})
        executable = shutil.which(words[0], path=env["PATH"]) if "/" not in words[0] else None
        if executable is None:
            raise AssemblyError(f"{state.stage.label}: `{words[0]}` is not on the stage's PATH")
        argv = [executable, *(state.fs.map_word(word) for word in words[1:])]
        cwd = state.fs.host(state.workdir)
        if os.path.basename(words[0]) != "uv":
            _run(argv, cwd=cwd, env=env, step=" ".join(words))
            return
        env |= {"UV_CACHE_DIR": self.uv_cache} | {k: os.environ[k] for k in UV_PASSTHROUGH if k in os.environ}
        # uv's cache is warm after `uv sync`; the index is asked only when a wheel is missing there.
        offline = _run(argv, cwd=cwd, env=env | {"UV_OFFLINE": "1"}, check=False)
        if offline.returncode != 0:
            _run(argv, cwd=cwd, env=env, step=" ".join(words))

    def _base_stand_in(self, version: tuple[int, int], uid: int, gid: int) -> Path:
        base = self.workspace / f"base-python{version[0]}.{version[1]}"
        bin_dir = base / BASE_PYTHON_DIR.lstrip("/")
        if not bin_dir.is_dir():
            interpreter = _interpreter_for(version, uid, gid)
            _make_dir(bin_dir)
            for name in ("python", "python3", f"python{version[0]}.{version[1]}"):
                (bin_dir / name).symlink_to(interpreter)
        return base

    def _stage_key(self, stage: df.Stage, context: BuildContext, base: Path) -> str:
        interpreter = os.path.realpath(base / BASE_PYTHON_DIR.lstrip("/") / "python")
        digest = hashlib.sha256(f"{self.uv_version}\0{interpreter}".encode())
        for command in stage.instructions:
            digest.update(command.original.encode() + b"\0")
            if command.cmd == "COPY" and df.flag(command, "from") is None:
                for source in command.value[:-1]:
                    for path, inside in context.entries(source):
                        digest.update(f"{source}/{inside}".encode() + path.read_bytes())
        return f"{stage.label.replace(' ', '-')}-{digest.hexdigest()[:16]}"


class BuildContext:
    """The files `docker build` sends: the context folder less what its ignore file excludes."""

    def __init__(self, root: Path, dockerfile: Path) -> None:
        self.root = root.resolve()
        patterns = read_ignore_patterns(self.root, dockerfile)
        specific = Path(f"{dockerfile}.dockerignore")
        self.ignore_file_name = specific.name if specific.is_file() else ".dockerignore"
        self._filter = _ContextFilter(patterns or [])

    def sends(self, relative: str) -> bool:
        """Whether `docker build` sends this context-relative path (and COPY may take it)."""
        return not self._filter.excluded(relative)

    def entries(self, source: str) -> list[tuple[Path, str]]:
        """(file, its path below `source`) for every file at or under `source` that is sent."""
        start = self.root / source.strip("/")
        prefix = start.relative_to(self.root).as_posix()
        return [
            (path, inside)
            for path, inside in _tree(start)
            if self.sends(prefix if start.is_file() else f"{prefix}/{inside}")
        ]


# --- small helpers --------------------------------------------------------------------------------


def _reproduced_paths(stage: df.Stage) -> tuple[str, ...]:
    """Image paths the final stage's COPY and WORKDIR produce: a skipped RUN must leave them alone."""
    paths = [command.value[-1] for command in stage.all("COPY")]
    paths += [command.value[0] for command in stage.all("WORKDIR")]
    return tuple(os.path.normpath(path) for path in paths if path.startswith("/"))


def _under(word: str, path: str) -> bool:
    return word == path or word.startswith(path.rstrip("/") + "/")


def _home_of(stage: df.Stage, uid: int) -> str:
    """HOME as Docker derives it from the image's passwd: `useradd --home-dir` for the uid, else /."""
    for run in stage.all("RUN"):
        for words in df.shell_commands(run):
            if words[0] == "useradd" and str(uid) in words:
                for option in ("--home-dir", "-d"):
                    if option in words:
                        return words[words.index(option) + 1]
    return "/"


def _interpreter_for(version: tuple[int, int], uid: int, gid: int) -> str:
    """A CPython X.Y the image user can run (pyenv's under /root is out of its reach)."""
    name = f"python{version[0]}.{version[1]}"
    candidates = [
        os.path.realpath(sys._base_executable),
        shutil.which(name, path="/usr/local/bin:/usr/bin:/bin"),
    ]
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for candidate in filter(None, candidates):
        try:
            result = subprocess.run(
                [candidate, "-I", "-c", probe], capture_output=True, text=True, check=False, env={},
                user=uid, group=gid, extra_groups=[],
            )
        except PermissionError:
            continue
        if result.returncode == 0 and result.stdout.strip() == f"{version[0]}.{version[1]}":
            return candidate
    raise AssemblyError(
        f"no CPython {version[0]}.{version[1]} that uid {uid} can run (tried {candidates});"
        f" install Debian's python3 (apt-get install python3), which stands in for the base image"
    )


def _tree(start: Path) -> list[tuple[Path, str]]:
    """(path, path relative to `start`) of every file and symlink at or below `start`, sorted."""
    if start.is_symlink() or start.is_file():
        return [(start, start.name)]
    found = []
    for folder, dirs, names in os.walk(start):
        dirs.sort()
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]  # os.walk does not enter them
        for name in sorted(names + links):
            path = Path(folder) / name
            found.append((path, path.relative_to(start).as_posix()))
    return found


def _copy_entry(source: Path, target: Path) -> None:
    _make_dir(target.parent)
    if target.exists() or target.is_symlink():
        target.unlink()
    if source.is_symlink():
        target.symlink_to(os.readlink(source))
    else:
        shutil.copy2(source, target)  # keeps the mode bits, as COPY does; the owner is root


def _make_dir(path: Path) -> Path:
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        created.chmod(0o755)  # what COPY/WORKDIR create, whatever this process's umask
    return path


def _run(
    argv: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
    step: str | None = None, check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT_S
    )
    if check and result.returncode != 0:
        raise AssemblyError(
            f"`{step or ' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip()[-800:]}"
        )
    return result
