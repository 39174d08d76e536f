"""The supervisor's control protocol: typed requests and replies over a private Unix socket.

One request per connection, as one JSON line (a `ControlRequest`, tagged by `op`); the supervisor
answers with JSON lines (`Reply`): any number of `progress` lines while it works, then one `result`
or one `error` (code 2: the request was wrong; code 1: the work failed). Every line is a pydantic
model, written with `encode` and read with `decode_*`: there is no other serialisation.

Threads, and why:
- the control server accepts on its own thread and gives each connection a thread of its own;
- `status`, `outputs` and `stop` are answered right there: they only read the supervisor's state
  (under its lock) or set its stop event, so a slow `scale` never makes `status` wait; so are
  `observer` and `observer-return` (a read-only identity lent to `tail`), which start no process;
- `scale`, `rotate` and `restart` start and stop processes, so they are queued as a `Job` for the
  supervisor's main thread, one at a time. Only that thread forks children because the kernel sends a
  child its parent-death signal when the *thread* that forked it ends, not the process: a simulator
  forked on a connection thread would be stopped when its client hung up. The connection thread only
  relays the job's replies; a client that goes away mid-way does not stop the job.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from factory_core.errors import OperationFailed, UsageError
from factory_core.verb_results import RotationOutcome
from local_stack.paths import StatePaths
from local_stack.rotation import RotationResult
from local_stack.status_document import STACK, Document, StackOutputs, StatusReport

Progress = Callable[[str], None]
MAX_REQUEST_BYTES = 65536
DEFAULT_TIMEOUT_S = 600.0

_KEYS = ConfigDict(extra="forbid")


# -- requests ------------------------------------------------------------------------------------


class StatusRequest(BaseModel):
    model_config = _KEYS
    op: Literal["status"] = "status"


class OutputsRequest(BaseModel):
    model_config = _KEYS
    op: Literal["outputs"] = "outputs"


class StopRequest(BaseModel):
    model_config = _KEYS
    op: Literal["stop"] = "stop"


class ScaleRequest(BaseModel):
    model_config = _KEYS
    op: Literal["scale"] = "scale"
    simulators: int


class RotateRequest(BaseModel):
    model_config = _KEYS
    op: Literal["rotate"] = "rotate"
    rollback: bool = False
    stop_after: str | None = None  # end after this step as if interrupted (tests of resume/rollback)


class RestartRequest(BaseModel):
    model_config = _KEYS
    op: Literal["restart"] = "restart"
    service: str


class ObserverRequest(BaseModel):
    """Lend `tail` a read-only identity of its own."""

    model_config = _KEYS
    op: Literal["observer"] = "observer"


class ObserverReturnRequest(BaseModel):
    model_config = _KEYS
    op: Literal["observer-return"] = "observer-return"
    identity: str


MainThreadRequest = ScaleRequest | RotateRequest | RestartRequest
AnyRequest = (
    StatusRequest | OutputsRequest | StopRequest | ObserverRequest | ObserverReturnRequest | MainThreadRequest
)
ControlRequest = Annotated[AnyRequest, Field(discriminator="op")]
_REQUEST: TypeAdapter[AnyRequest] = TypeAdapter(ControlRequest)


# -- results (one per request; status and outputs are the documents in status_document) -----------


class StopResult(Document):
    stopping: bool
    pid: int


class ScaleResult(Document):
    simulators: int
    before: int
    config_file: str


class RestartResult(Document):
    service: str
    pid: int | None


class ObserverGrant(Document):
    """A read-only identity for one `tail`: its certificate, and where the broker is."""

    identity: str
    cert: str
    key: str
    ca: str
    host: str
    port: int
    topic_prefix: str = ""  # where the devices publish: the Basic Ingest prefix in that archive mode


class ObserverReturned(Document):
    identity: str


class RotationReport(Document):
    from_generation: str
    to_generation: str
    rolled_back: bool
    finished: bool
    steps: list[str]

    def to_result(self) -> RotationOutcome:
        return RotationOutcome(
            stack=STACK,
            generation=self.from_generation if self.rolled_back else self.to_generation,
            from_generation=self.from_generation,
            to_generation=self.to_generation,
            rolled_back=self.rolled_back,
            finished=self.finished,
            steps=tuple(self.steps),
        )

    @classmethod
    def of(cls, result: RotationResult) -> RotationReport:
        return cls(
            from_generation=result.from_generation,
            to_generation=result.to_generation,
            rolled_back=result.rolled_back,
            finished=result.finished,
            steps=list(result.steps),
        )


RESULT_TYPES: dict[type[BaseModel], type[Document]] = {
    StatusRequest: StatusReport,
    OutputsRequest: StackOutputs,
    StopRequest: StopResult,
    ScaleRequest: ScaleResult,
    RotateRequest: RotationReport,
    RestartRequest: RestartResult,
    ObserverRequest: ObserverGrant,
    ObserverReturnRequest: ObserverReturned,
}


# -- replies -------------------------------------------------------------------------------------


class ProgressReply(BaseModel):
    kind: Literal["progress"] = "progress"
    message: str


class ResultReply(BaseModel):
    kind: Literal["result"] = "result"
    result: dict[str, Any]


class ErrorReply(BaseModel):
    kind: Literal["error"] = "error"
    error: str
    code: Literal[1, 2]  # the CLI's exit code: 2 the request was wrong, 1 the work failed

    def exception(self) -> Exception:
        return UsageError(self.error) if self.code == 2 else OperationFailed(self.error)


Reply = Annotated[ProgressReply | ResultReply | ErrorReply, Field(discriminator="kind")]
_REPLY = TypeAdapter(Reply)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode() + b"\n"


def decode_request(line: bytes) -> AnyRequest:
    """The request on one line; a UsageError that says what is wrong with it otherwise."""
    try:
        return _REQUEST.validate_json(line)
    except ValidationError as error:
        raise UsageError(_describe(error)) from None


def build_request(op: str, **fields: Any) -> AnyRequest:
    """A request from its `op` and fields by their Python names (`stop_after=...`)."""
    try:
        return _REQUEST.validate_python({"op": op, **fields})
    except ValidationError as error:
        raise UsageError(_describe(error)) from None


def decode_reply(line: bytes) -> ProgressReply | ResultReply | ErrorReply:
    try:
        return _REPLY.validate_json(line)
    except ValidationError:
        raise OperationFailed(
            f"the supervisor sent a reply this client cannot read: {line[:200]!r}"
        ) from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    if first["type"] == "union_tag_invalid":
        return f"unknown request {first['input'].get('op')!r}"
    if first["type"] == "union_tag_not_found":
        return "a request needs an `op`"
    if len(first["loc"]) < 2:  # not JSON, or JSON but not an object
        return "requests are one JSON object per line"
    where = ".".join(str(part) for part in first["loc"][1:])
    return f"bad {first['loc'][0]} request: {where}: {first['msg']}"


# -- serving -------------------------------------------------------------------------------------


class Job:
    """A request waiting for the main thread, and the queue its replies travel back on."""

    def __init__(self, request: MainThreadRequest) -> None:
        self.request = request
        self.replies: queue.Queue[ProgressReply | ResultReply | ErrorReply] = queue.Queue()

    def progress(self, message: str) -> None:
        self.replies.put(ProgressReply(message=message))

    def refuse(self, message: str) -> None:
        """Never to be done (the stack is stopping): the waiting client gets this and code 1."""
        self.replies.put(ErrorReply(error=message, code=1))


class ObserverDesk(Protocol):
    def lend_observer(self) -> ObserverGrant: ...

    def return_observer(self, name: str) -> ObserverReturned: ...


class ControlHandler(Protocol):
    """What the control server asks of the supervisor; see the module note for which thread calls what."""

    @property
    def stop_requested(self) -> bool: ...

    def request_stop(self) -> None: ...

    def status_report(self) -> StatusReport: ...

    def outputs_report(self) -> StackOutputs: ...

    def submit(self, job: Job) -> None: ...

    def scale(self, simulators: int, progress: Progress) -> ScaleResult: ...

    def rotate(self, progress: Progress, *, rollback: bool, stop_after: str | None) -> RotationResult: ...

    def restart(self, service: str, progress: Progress) -> RestartResult: ...

    @property
    def observer_identities(self) -> ObserverDesk:
        """Lends `tail` read-only identities; answered on the connection's thread (no process starts)."""
        ...

    def note(self, message: str) -> None:
        """An event worth showing in `status` (a request that failed with a bug)."""
        ...


def answer_now(request: BaseModel, handler: ControlHandler) -> Document | None:
    """Connection thread: the answer to a request that only reads, or None if it needs the main thread."""
    match request:
        case StatusRequest():
            return handler.status_report()
        case OutputsRequest():
            return handler.outputs_report()
        case StopRequest():
            handler.request_stop()
            return StopResult(stopping=True, pid=os.getpid())
        case ObserverRequest():
            return handler.observer_identities.lend_observer()
        case ObserverReturnRequest(identity=identity):
            return handler.observer_identities.return_observer(identity)
    return None


def perform(job: Job, handler: ControlHandler) -> None:
    """Main thread: do the job and put its final reply on its queue, whatever happens."""
    try:
        result = _dispatch(job, handler)
    except UsageError as error:
        job.replies.put(ErrorReply(error=str(error), code=2))
    except OperationFailed as error:
        job.replies.put(ErrorReply(error=str(error) or "the stack is stopping", code=1))
    except Exception as error:  # a bug must not take the whole stack down with it
        handler.note(f"request {job.request.op} failed: {error!r}")
        job.replies.put(ErrorReply(error=f"{job.request.op} failed: {error!r}", code=1))
    else:
        job.replies.put(ResultReply(result=result.as_dict()))


def _dispatch(job: Job, handler: ControlHandler) -> Document:
    match job.request:
        case ScaleRequest(simulators=count):
            return handler.scale(count, job.progress)
        case RotateRequest(rollback=rollback, stop_after=stop_after):
            return RotationReport.of(handler.rotate(job.progress, rollback=rollback, stop_after=stop_after))
        case RestartRequest(service=name):
            return handler.restart(name, job.progress)


class _Connection(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        handler = self.server.handler
        try:
            request = decode_request(self.rfile.readline(MAX_REQUEST_BYTES))
            answer = answer_now(request, handler)
            if answer is not None:
                self._send(ResultReply(result=answer.as_dict()))
                return
            if handler.stop_requested:
                raise OperationFailed("the stack is stopping")
        except (UsageError, OperationFailed) as error:
            self._send(ErrorReply(error=str(error), code=2 if isinstance(error, UsageError) else 1))
            return
        except Exception as error:  # a bug answers this client, and the server goes on
            handler.note(f"request {request.op} failed: {error!r}")
            self._send(ErrorReply(error=f"{request.op} failed: {error!r}", code=1))
            return
        assert isinstance(request, ScaleRequest | RotateRequest | RestartRequest)
        job = Job(request)
        handler.submit(job)
        while True:
            reply = job.replies.get()
            self._send(reply)
            if not isinstance(reply, ProgressReply):
                return

    def _send(self, reply: BaseModel) -> None:
        # A client that hung up gets nothing more; the job goes on (see the module note).
        with contextlib.suppress(OSError):
            self.wfile.write(encode(reply))
            self.wfile.flush()


def check_socket_folder(folder: Path) -> None:
    """Refuse a folder for the control socket that someone else could swap the socket in.

    The fallback under /tmp is shared with every user: whoever creates `/tmp/iotfactory-<uid>`
    first could otherwise listen in the supervisor's place or read what the verbs send it.
    """
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif info.st_uid != os.getuid():
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & 0o022:
        problem = f"can be written by others (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem:
        raise UsageError(
            f"{folder} would hold the control socket but {problem}; remove it (it is recreated private)"
            " or set a shorter IOTFACTORY_STATE_DIR"
        )


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves requests on the state folder's control socket until `close()`."""

    daemon_threads = True

    def __init__(self, path: Path, handler: ControlHandler) -> None:
        self.handler = handler
        self.path = path
        check_socket_folder(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_socket_folder(path.parent)  # it may have appeared between the check and mkdir
        path.unlink(missing_ok=True)
        # The socket starts out private: 0o177 leaves read/write for its owner only.
        previous = os.umask(0o177)
        try:
            super().__init__(str(path), _Connection)
        finally:
            os.umask(previous)
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


# -- client --------------------------------------------------------------------------------------

ResultT = TypeVar("ResultT", bound=Document)


class ControlClient:
    """Typed requests to the supervisor of one state folder; progress lines go to `on_progress`."""

    def __init__(self, paths: StatePaths, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.paths = paths
        self.timeout_s = timeout_s

    def status(self) -> StatusReport:
        return self._call(StatusRequest(), StatusReport)

    def outputs(self) -> StackOutputs:
        return self._call(OutputsRequest(), StackOutputs)

    def stop(self) -> StopResult:
        return self._call(StopRequest(), StopResult)

    def scale(self, simulators: int, on_progress: Progress | None = None) -> ScaleResult:
        return self._call(ScaleRequest(simulators=simulators), ScaleResult, on_progress)

    def rotate(
        self, on_progress: Progress | None = None, *, rollback: bool = False, stop_after: str | None = None
    ) -> RotationReport:
        request = RotateRequest(rollback=rollback, stop_after=stop_after)
        return self._call(request, RotationReport, on_progress)

    def restart(self, service: str, on_progress: Progress | None = None) -> RestartResult:
        return self._call(RestartRequest(service=service), RestartResult, on_progress)

    def lend_observer(self) -> ObserverGrant:
        return self._call(ObserverRequest(), ObserverGrant)

    def return_observer(self, identity: str) -> ObserverReturned:
        return self._call(ObserverReturnRequest(identity=identity), ObserverReturned)

    def send(self, request: BaseModel, on_progress: Progress | None = None) -> Document:
        """Any request; the result is the model `RESULT_TYPES` names for it."""
        return self._call(request, RESULT_TYPES[type(request)], on_progress)

    def _call(
        self, request: BaseModel, result_type: type[ResultT], on_progress: Progress | None = None
    ) -> ResultT:
        path = self.paths.control_socket
        check_socket_folder(path.parent)
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout_s)
        try:
            connection.connect(str(path))
        except OSError:
            connection.close()
            raise OperationFailed(
                f"the local stack's supervisor does not answer on {path}; "
                "see `python cli.py status --stack local`"
            ) from None
        with connection, connection.makefile("rwb") as stream:
            stream.write(encode(request))
            stream.flush()
            for line in _lines(stream):
                reply = decode_reply(line)
                if isinstance(reply, ProgressReply):
                    if on_progress is not None:
                        on_progress(reply.message)
                    continue
                if isinstance(reply, ErrorReply):
                    raise reply.exception()
                return result_type.model_validate(reply.result)
        raise OperationFailed("the supervisor closed the connection without an answer (is it stopping?)")


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


def request(
    paths: StatePaths,
    op: str,
    progress: Progress | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **args: Any,
) -> Any:
    """The string API (`request(paths, "scale", simulators=3)`): the result as its JSON object.

    For scripts and tests that poke at the supervisor; the verbs use `ControlClient`'s typed replies.
    """
    return ControlClient(paths, timeout_s).send(build_request(op, **args), progress).as_dict()
