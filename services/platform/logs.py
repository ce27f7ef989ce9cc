"""Loguru set-up: a coloured console and one rotating file per process kind under ``.logs/``.

Every line carries the current request id and has known secret values replaced by ``***``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

from services.config import LogSettings
from services.platform.request_context import request_id_var

if TYPE_CHECKING:
    from loguru import Message, Record

LINE_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - "
    "[{extra[request_id]}] {message}"
)
JSON_FORMAT = "{extra[json]}"  # loguru adds the newline
CONSOLE_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{name}</cyan>:<cyan>{function}</cyan>:<cyan>{line}</cyan> - "
    "[{extra[request_id]}] <level>{message}</level>"
)


class SharedFileSink:
    """An append-only log file that several processes can write and rotate safely.

    Loguru's own rotation is per process: with several uvicorn workers each one renames the file
    on its own and they end up writing to different files (Delgan/loguru#340, #929). Here every
    write is one O_APPEND ``write()`` (lines from several processes never interleave), rotation
    happens under an ``flock`` on a side file, and a process whose file was rotated by another
    notices the new inode and reopens.
    """

    _CHECK_EVERY_BYTES = 64 * 1024
    _CHECK_EVERY_SECONDS = 1.0

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._retention_seconds = retention_days * 86400
        self._clock = clock
        self._fd = -1
        self._inode = -1
        self._unchecked_bytes = 0
        self._last_check = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._inode = os.fstat(self._fd).st_ino

    def write(self, message: str) -> None:
        """Append one formatted line; rotate or reopen when due."""
        data = message.encode("utf-8", "replace")
        os.write(self._fd, data)
        self._unchecked_bytes += len(data)
        now = time.monotonic()
        if (
            self._unchecked_bytes >= self._CHECK_EVERY_BYTES
            or now - self._last_check >= self._CHECK_EVERY_SECONDS
        ):
            self._unchecked_bytes = 0
            self._last_check = now
            self._maybe_rotate()

    def _maybe_rotate(self) -> None:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            self._open()
            return
        if on_disk.st_ino != self._inode:
            self._open()  # another process rotated it
            return
        if on_disk.st_size < self._max_bytes:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Re-check under the lock: another process may have rotated while we waited.
            on_disk = os.stat(self.path)
            if on_disk.st_ino == self._inode and on_disk.st_size >= self._max_bytes:
                stamp = datetime.fromtimestamp(self._clock()).strftime("%Y-%m-%d_%H-%M-%S_%f")
                os.rename(self.path, self.path.with_name(f"{self.path.stem}.{stamp}.log"))
                self._remove_expired()
            self._open()

    def _remove_expired(self) -> None:
        cutoff = self._clock() - self._retention_seconds
        for old in self.path.parent.glob(f"{self.path.stem}.*.log"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:
                continue

    def close(self) -> None:
        """Close the file descriptor (loguru calls ``stop`` on removal)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    stop = close


def printable(text: str) -> str:
    """`text` with every control character escaped (`\\n`, `\\x1b`, ...), for log lines that carry
    client input: a decoded `%0A` in a path must not start a forged line of its own."""
    if text.isprintable():
        return text  # the common case: one C-level scan
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class AccessLog:
    """One line per request, written straight to the process's log file.

    Loguru costs ~20 us a line in isolation and ~65 us measured inside a busy worker (bench/run.py
    at concurrency 1: 0.526 vs 0.460 ms added latency), more than the rest of the middleware.
    Request lines are the one log on the hot path, so they skip loguru's record machinery but keep
    its file, line format and rotation (and the JSON shape of `_flat_json` with FR_LOG_JSON=1).
    """

    def __init__(
        self, sink: SharedFileSink, *, json_lines: bool, clock: Callable[[], float] = time.time
    ):
        self._sink = sink
        self._json = json_lines
        self._clock = clock
        self._second = -1
        self._stamp = ""

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}"

    def request(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        elapsed_ms: float,
        model: str | None,
    ) -> None:
        """Write the line for one finished request."""
        now = self._clock()
        method, path = printable(method), printable(path)
        message = f"{method} {path} {status} {elapsed_ms:.1f}ms" + (
            f" model={model}" if model else ""
        )
        if self._json:
            line = orjson.dumps(
                {
                    "time": datetime.fromtimestamp(now)
                    .astimezone()
                    .isoformat(timespec="milliseconds"),
                    "level": "INFO",
                    "name": "access",
                    "request_id": request_id,
                    "message": message,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed_ms, 3),
                    "model": model,
                }
            ).decode()
        else:
            line = (
                f"{self._timestamp(now)} | INFO     | access:request:0 - [{request_id}] {message}"
            )
        self._sink.write(line + "\n")


def _flat_json(record: Record) -> str:
    """One flat JSON object per line (AccessLog writes the same shape), not loguru's nested one."""
    data: dict[str, Any] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "name": record["name"],
        "function": record["function"],
        "line": record["line"],
        "request_id": record["extra"].get("request_id", "-"),
        "message": record["message"],
    }
    if record["exception"] is not None:
        exc = record["exception"]
        data["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return orjson.dumps(data).decode()


def _patcher(secrets: Iterable[str], json_lines: bool) -> Callable[[Record], None]:
    known = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def patch(record: Record) -> None:
        record["extra"]["request_id"] = request_id_var.get()
        if known:
            message = record["message"]
            for secret in known:
                if secret in message:
                    message = message.replace(secret, "***")
            record["message"] = message
        if json_lines:
            record["extra"]["json"] = _flat_json(record)

    return patch


def configure_logging(
    process: str,
    settings: LogSettings,
    *,
    secrets: Iterable[str] = (),
    console: bool = True,
) -> SharedFileSink:
    """Send this process's logs to the console and ``<dir>/<process>.log``; return the file sink."""
    logger.remove()
    json_lines = settings.json_lines
    logger.configure(patcher=_patcher(secrets, json_lines))
    file_format = JSON_FORMAT if json_lines else LINE_FORMAT
    if console:
        logger.add(
            sys.stderr,
            level=settings.level,
            format=JSON_FORMAT if json_lines else CONSOLE_FORMAT,
            colorize=not json_lines and sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,
        )
    path = Path(settings.dir) / f"{process}.log"
    sink = SharedFileSink(
        path, max_bytes=settings.rotation_bytes, retention_days=settings.retention_days
    )
    logger.add(
        _as_loguru_sink(sink),
        level=settings.level,
        format=file_format,
        colorize=False,
        backtrace=False,
        diagnose=False,  # never print local variables: they may hold keys
    )
    return sink


def _as_loguru_sink(sink: SharedFileSink) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        sink.write(str(message))

    write.stop = sink.close  # type: ignore[attr-defined]
    return write


def secret_values(env_names: Iterable[str | None], environ: dict[str, str] | Any) -> list[str]:
    """The values of the env vars that hold secrets, for redaction."""
    return [environ[name] for name in env_names if name and environ.get(name)]


class _InterceptHandler:
    """Routes stdlib logging (uvicorn, asyncio) into loguru, keeping the caller's location."""

    @staticmethod
    def install(level: str) -> None:
        import logging

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    name: str | int = logger.level(record.levelname).name
                except ValueError:
                    name = record.levelno
                logger.opt(depth=6, exception=record.exc_info).log(name, record.getMessage())

        logging.basicConfig(handlers=[Handler()], level=level, force=True)
        for noisy in ("uvicorn", "uvicorn.error"):
            logging.getLogger(noisy).handlers = []
            logging.getLogger(noisy).propagate = True
        # The gateway writes its own access line (with the request id). uvicorn decides whether
        # to write one by whether this logger has handlers, so it must have none, and not
        # propagate to ours: otherwise every request is logged twice.
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False


def intercept_stdlib_logging(level: str = "INFO") -> None:
    """Send stdlib log records (uvicorn's startup and errors) to the loguru sinks."""
    _InterceptHandler.install(level)
