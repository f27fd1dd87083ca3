"""Every external command goes through a Runner: argv in; rc, output and duration out; always a timeout."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from snapport.errors import SystemCommandError

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Completed:
    """The result of one command."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    duration_ms: float

    def check(self) -> Completed:
        """Raise `SystemCommandError` (with the command's own words) unless it exited 0."""
        if self.rc != 0:
            said = (self.stderr or self.stdout).strip().splitlines()
            detail = said[-1] if said else "no output"
            raise SystemCommandError(f"`{' '.join(self.argv)}` exited {self.rc}: {detail}")
        return self


class Runner(Protocol):
    """Runs a command; implementations: `SubprocessRunner` (real) and `RecordingRunner` (unit tests)."""

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> Completed: ...


class SubprocessRunner:
    """The real one: no shell, a timeout on every call, the environment inherited, LC_ALL=C for parsable output."""

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> Completed:
        args = tuple(str(a) for a in argv)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                args,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=_c_locale(),
            )
        except subprocess.TimeoutExpired as exc:
            raise SystemCommandError(f"`{' '.join(args)}` did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise SystemCommandError(f"cannot run `{args[0]}`: {exc.strerror or exc}") from exc
        result = Completed(args, proc.returncode, proc.stdout, proc.stderr, (time.monotonic() - started) * 1000)
        return result.check() if check else result


def _c_locale() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    return env


Responder = Callable[[tuple[str, ...]], tuple[int, str, str] | None]


@dataclass
class RecordingRunner:
    """Records every argv and answers from `responders` (first non-None wins; default rc 0, no output)."""

    responders: list[Responder] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> Completed:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        rc, out, err = 0, "", ""
        for responder in self.responders:
            answer = responder(args)
            if answer is not None:
                rc, out, err = answer
                break
        result = Completed(args, rc, out, err, 0.0)
        return result.check() if check else result
