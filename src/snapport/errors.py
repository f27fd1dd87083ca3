"""The error vocabulary: every failure snapport reports has a stable name, an exit code and retry advice.

The tree (a leaf module: it imports nothing of ours, so every layer, the model included, may raise these), each
class with its stable name, its exit code and, where an agent answers it, its HTTP status (inherited; 500 else)::

    SnapportError                       INTERNAL              70
    ├── UsageError                      BAD_ARGUMENT           2
    ├── DocumentError                   INVALID_DOCUMENT       1
    ├── ObjectNotFound                  OBJECT_NOT_FOUND       3
    ├── BadState                        BAD_STATE              4
    ├── CatalogError                    CATALOG_ERROR          5
    ├── SetInProgress                   SET_IN_PROGRESS        6
    ├── MaxVolumes                      MAX_VOLUMES            7
    ├── UnsupportedContext              UNSUPPORTED_CONTEXT    8
    ├── VolumeNotSupported              VOLUME_NOT_SUPPORTED   9
    ├── ProviderError                   PROVIDER_ERROR        10
    │   └── ProviderVeto                PROVIDER_VETO         11
    ├── WriterError                     WRITER_ERROR          12
    ├── FreezeTimeout                   FREEZE_TIMEOUT        13
    ├── HoldTimeout                     HOLD_TIMEOUT          14
    ├── ImportRefused                   IMPORT_REFUSED        15
    │   └── ClusterRule                 CLUSTER_RULE          16
    ├── PathEscape                      PATH_ESCAPE           17
    ├── LeaseExpired                    LEASE_EXPIRED         18
    ├── SystemCommandError              SYSTEM_ERROR          19
    ├── AccessDenied                    ACCESS_DENIED         20
    ├── CertificateError                CERTIFICATE_ERROR     21
    ├── AgentUnreachable                AGENT_UNREACHABLE     22
    ├── JobInterrupted                  JOB_INTERRUPTED       23
    ├── ConfigError                     CONFIG_ERROR          24
    ├── TargetNotEmpty                  TARGET_NOT_EMPTY      25
    ├── RestoreIncomplete               RESTORE_INCOMPLETE    28
    ├── UnsupportedOperation            UNSUPPORTED_OPERATION 29
    ├── DoctorFound                     DOCTOR_FOUND          30
    └── EngineStalled                   ENGINE_STALLED        31

`docs/exit-codes.md` is the user-facing table; a unit test keeps it in step with this module. An error that crossed
a process or a network (a job's, an agent's answer, the engine child's) comes back as its own class by
`SnapportError.from_code`.
"""

from __future__ import annotations

from typing import ClassVar

_BY_CODE: dict[str, type[SnapportError]] = {}  # every class by its name, as each is defined


class SnapportError(Exception):
    """Root of every error snapport reports on purpose; anything else is a bug."""

    code: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 70
    http_status: ClassVar[int] = 500  # what an agent answers with it
    advice: ClassVar[str] = "this is a bug in snapport; rerun with --debug and report the traceback"

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _BY_CODE[cls.code] = cls

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints it as is.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])

    @staticmethod
    def from_code(code: str | None, message: str) -> SnapportError:
        """The error of the class named `code`, carrying `message`; a name this version does not know (or none)
        gives the root class, the name kept in the message."""
        cls = _BY_CODE.get(code or "")
        if cls is None:
            return SnapportError(f"{code}: {message}" if code else message)
        return cls(message)

    @staticmethod
    def advice_for(code: str) -> str:
        """The advice of the class named `code` (the root's for a name this version does not know)."""
        return _BY_CODE.get(code, SnapportError).advice


_BY_CODE[SnapportError.code] = SnapportError


class UsageError(SnapportError):
    code = "BAD_ARGUMENT"
    exit_code = 2
    http_status = 400
    advice = "check the command line against `snapport VERB --help`"


class DocumentError(SnapportError):
    """An XML document was refused: not well-formed, hostile, too big, or not valid against its schema."""

    code = "INVALID_DOCUMENT"
    exit_code = 1
    http_status = 400
    advice = "the document is not usable; fetch a fresh copy from the host that wrote it"

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        self.line = line
        self.column = column
        where = ""
        if line is not None:
            where = f" (line {line}" + (f", column {column})" if column is not None else ")")
        super().__init__(message + where)


class ObjectNotFound(SnapportError):
    code = "OBJECT_NOT_FOUND"
    exit_code = 3
    http_status = 404
    advice = "list what exists with `snapport list`"


class BadState(SnapportError):
    """An operation came in the wrong order for the object's life cycle (VSS_E_BAD_STATE)."""

    code = "BAD_STATE"
    exit_code = 4
    http_status = 409
    advice = "see the object's state with `snapport show ID`; do not retry the same step"


class CatalogError(SnapportError):
    code = "CATALOG_ERROR"
    exit_code = 5
    advice = "check $SNAPPORT_HOME is writable and the catalog URL is reachable, then retry"


class SetInProgress(SnapportError):
    code = "SET_IN_PROGRESS"
    exit_code = 6
    http_status = 409
    advice = "another snapshot set is being created on this host; retry when it ends"


class MaxVolumes(SnapportError):
    code = "MAX_VOLUMES"
    exit_code = 7
    http_status = 400
    advice = "a set holds at most 64 volumes; split the volumes over several sets"


class UnsupportedContext(SnapportError):
    code = "UNSUPPORTED_CONTEXT"
    exit_code = 8
    http_status = 400
    advice = "choose a context and attributes the provider supports (`snapport create --help`)"


class VolumeNotSupported(SnapportError):
    code = "VOLUME_NOT_SUPPORTED"
    exit_code = 9
    http_status = 400
    advice = "no provider covers this volume; put it on an array LUN or a supported filesystem"


class ProviderError(SnapportError):
    code = "PROVIDER_ERROR"
    exit_code = 10
    advice = "the provider failed unexpectedly; wait a few minutes and retry up to three times"


class ProviderVeto(ProviderError):
    code = "PROVIDER_VETO"
    exit_code = 11
    advice = "the provider refused the operation; wait a few minutes and retry up to three times"


class WriterError(SnapportError):
    code = "WRITER_ERROR"
    exit_code = 12
    advice = "see `snapport writers` for the failing writer and its last error"


class FreezeTimeout(SnapportError):
    code = "FREEZE_TIMEOUT"
    exit_code = 13
    advice = "a writer did not freeze in time; reduce the load or raise --freeze-timeout, then retry"


class HoldTimeout(SnapportError):
    code = "HOLD_TIMEOUT"
    exit_code = 14
    advice = "the provider commit exceeded its bound; reduce the load or raise --commit-timeout, then retry"


class ImportRefused(SnapportError):
    code = "IMPORT_REFUSED"
    exit_code = 15
    http_status = 409
    advice = "check the Backup Components Document names LUNs that exist and the set is not imported elsewhere"


class ClusterRule(ImportRefused):
    code = "CLUSTER_RULE"
    exit_code = 16
    advice = "import on a host that does not see the original volume"


class PathEscape(SnapportError):
    code = "PATH_ESCAPE"
    exit_code = 17
    http_status = 400
    advice = "paths must stay inside their volume: no '..', no absolute paths"


class LeaseExpired(SnapportError):
    code = "LEASE_EXPIRED"
    exit_code = 18
    http_status = 410
    advice = "the backup host stopped renewing its lease; the session was aborted, start a new backup"


class SystemCommandError(SnapportError):
    """A system command or call (losetup, mount, an ioctl) failed; the message carries its output."""

    code = "SYSTEM_ERROR"
    exit_code = 19
    advice = "the operating system refused; check the message, free the resource it names, then retry"


class AccessDenied(SnapportError):
    """An agent refused an authenticated peer: its role may not call the route, or the object is not its own."""

    code = "ACCESS_DENIED"
    exit_code = 20
    http_status = 403
    advice = "call from the host the object belongs to, with a certificate of the role the route needs (docs/agent.md)"


class CertificateError(SnapportError):
    """A certificate or key is missing, unreadable, expired, or does not carry a snapport host identity."""

    code = "CERTIFICATE_ERROR"
    exit_code = 21
    http_status = 403
    advice = "check the files with `snapport certs show FILE`; issue a new one with `snapport certs issue`"


class AgentUnreachable(SnapportError):
    """No answer from an agent: connection refused or timed out, or the TLS handshake failed."""

    code = "AGENT_UNREACHABLE"
    exit_code = 22
    advice = "check the address, that `snapport agent serve` runs there, and that both hosts trust the same site CA"


class JobInterrupted(SnapportError):
    """The agent stopped (or died) while a job was queued or running."""

    code = "JOB_INTERRUPTED"
    exit_code = 23
    advice = "the agent stopped before the job finished; check the agent is running, then submit the job again"


class ConfigError(SnapportError):
    code = "CONFIG_ERROR"
    exit_code = 24
    advice = "fix the configuration file named in the message (docs/agent.md describes every key)"


class DoctorFound(SnapportError):
    """`snapport doctor` found leftovers the catalog and the machine disagree on (and, with --repair, some remain)."""

    code = "DOCTOR_FOUND"
    exit_code = 30
    advice = "run `snapport doctor --repair`; what it leaves says why (docs/doctor.md)"


class EngineStalled(SnapportError):
    """A backup's progress stood still longer than its stall bound (its reads blocked on storage, say): stopped."""

    code = "ENGINE_STALLED"
    exit_code = 31
    advice = "check the storage the exposed copy is read from answers (e.g. `ceph -s`), then back up again"


class RestoreIncomplete(SnapportError):
    """A restore failed after it had written files: the message names the step and what is left at the target."""

    code = "RESTORE_INCOMPLETE"
    exit_code = 28
    advice = "the target holds a partial restore: fix the cause, then restore again with --overwrite (or remove it)"


class UnsupportedOperation(SnapportError):
    """The object cannot do what was asked at all (e.g. a provider that cannot revert): retrying will not help."""

    code = "UNSUPPORTED_OPERATION"
    exit_code = 29
    advice = "this provider or object cannot do it; the message says what to do instead"


class TargetNotEmpty(SnapportError):
    """A restore was pointed at a directory that already holds files (and was not told to overwrite)."""

    code = "TARGET_NOT_EMPTY"
    exit_code = 25
    advice = "restore into an empty directory, or pass --overwrite to replace what the restore writes"


def all_error_classes() -> list[type[SnapportError]]:
    """Every error class, in the order of their exit codes (the exit-code table's)."""
    found: list[type[SnapportError]] = []
    pending: list[type[SnapportError]] = [SnapportError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.exit_code)
