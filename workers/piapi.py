"""A small PiAPI client on httpx: create, get and cancel tasks, read the account, upload files.

It imports nothing from the rest of the project: base URLs (the API's and the upload
endpoint's), key, timeouts and an optional `before_request` hook (the fleet-wide rate
limiter) come in as arguments.

Every failure is one of three kinds, so callers decide by type, never by message:

    PiAPIError
    ├── RetryableError          nothing was done; trying again later is safe
    │   ├── RateLimited         429 (retry_after_s from Retry-After when given; `scope`:
    │   │                       too many requests, or too many tasks in flight)
    │   ├── ServerError         5xx or an unreadable answer to a read
    │   ├── NetworkError        the request provably never arrived (connect, pool)
    │   └── ProviderBusy        a create refused because PiAPI's provider pool cannot take
    │                           it now ("no available account", a pool account "doesn't
    │                           have enough credits"): not the account's problem
    ├── PermanentError          trying again cannot help
    │   ├── InvalidRequest      400, or a non-success `code` in the envelope
    │   ├── NotFound            404: PiAPI does not know the task
    │   ├── PlanRequired        403 to an upload: the plan has no uploads (Creator or higher)
    │   └── AccountError        401, 402, 403 (the key refused), or a create refused for
    │                           the account's balance or credit: stop the fleet
    └── AmbiguousError          a create whose outcome is unknown (sent, no answer):
                                a paid task may exist; never post it again blindly

The reason PiAPI gives for a refusal may sit in `data.error` (`raw_message`, `message`) or
`data.logs` rather than in the top-level `message`: the exception text carries the most
specific one (bounded to MESSAGE_CHARS), with the top-level message after it.

What PiAPI's words mean is decided here, once: a task's status word becomes an `Outcome`
(`STATUS_OUTCOMES`, read through `TaskView.outcome` and `HistoryRow.outcome`), a 429 carries
its `LimitScope`, and `has_content` tells a real output from PiAPI's empty placeholders.
"""

from __future__ import annotations

import base64
import email.utils
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NoReturn

import httpx

ZERO_TIME = "0001-01-01T00:00:00Z"
SUCCESS_CODES = frozenset({0, 200})
RETRY_AFTER_CAP_S = 300.0
"""A Retry-After beyond this is treated as this: never park a row for hours on one header."""
GATEWAY_TIMEOUTS = frozenset({504, 522, 524})
"""Proxy timeouts: the origin may have processed the request, so a create is ambiguous."""
MESSAGE_CHARS = 300
"""Most characters of PiAPI's own words an exception or task error carries."""
LOG_LINES = 3
"""How many of a task's last log entries stand in for an empty error."""
LOG_KEYS = ("message", "msg", "error", "raw_message", "detail", "content", "text", "log")
"""Where a log entry that is an object keeps its words."""
ACCOUNT_WORDS = ("credit", "balance", "insufficient")
"""A create refused with these words is about the account's money: stop the fleet."""
PROVIDER_WORDS = ("doesn't have enough credit", "does not have enough credit",
                  "no available account")
"""...unless it names a pool account PiAPI's provider uses (retryable), not yours."""


class Outcome(StrEnum):
    """What a task's status word means, whatever PiAPI spelled it (see STATUS_OUTCOMES)."""

    PENDING = "pending"
    """Waiting for a pool account: in flight, and the only state PiAPI can cancel."""
    RUNNING = "running"
    """In flight and not cancellable: processing, staged, or a word nobody documented."""
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True once PiAPI will not change the task any more."""
        return self in (Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED)


STATUS_OUTCOMES: Mapping[str, Outcome] = {
    "pending": Outcome.PENDING,
    "processing": Outcome.RUNNING,
    "staged": Outcome.RUNNING,  # Midjourney over the concurrency limit, queued (docs)
    "completed": Outcome.COMPLETED,
    "finished": Outcome.COMPLETED,  # the history's word for a completed task (docs)
    "success": Outcome.COMPLETED,  # accepted by other clients (client practice)
    "succeeded": Outcome.COMPLETED,  # likewise
    "failed": Outcome.FAILED,
    "cancelled": Outcome.CANCELLED,  # no status after a cancel is documented, but a
    "canceled": Outcome.CANCELLED,  # cancelled task cannot resume (its DELETE says "canceled")
}
"""Every status word PiAPI is known to use (lower-cased; the schema capitalises them), and
what it means. A word not here is taken as still running: the docs say to treat an
unknown status as not terminal."""


def status_outcome(status: str) -> Outcome:
    """What a task status word means (compared case-insensitively; unknown: running)."""
    return STATUS_OUTCOMES.get(status.strip().lower(), Outcome.RUNNING)


class LimitScope(StrEnum):
    """Which of PiAPI's limits a 429 says was reached."""

    RATE = "rate"
    """Too many requests: slow the fleet's request rate down."""
    CONCURRENCY = "concurrency"
    """Too many tasks in flight (a create refused over the account's limit)."""


def limit_scope(message: str, *, create: bool) -> LimitScope:
    """The scope of a 429 with this text. Only a create adds a task, so a 429 to anything
    else is about the request rate; a create's 429 that names neither limit is taken as
    the concurrency limit (the docs leave open whether PiAPI refuses over-limit creates,
    and how)."""
    if not create:
        return LimitScope.RATE
    text = message.lower()
    if "concurren" in text or ("task" in text and "limit" in text):
        return LimitScope.CONCURRENCY
    if "rate" in text or "too many requests" in text:
        return LimitScope.RATE
    return LimitScope.CONCURRENCY


class PiAPIError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(PiAPIError):
    """Nothing was done; the same request may be sent again later."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class RateLimited(RetryableError):
    """HTTP 429: too many requests or too many tasks in flight (`scope` says which)."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None,
                 scope: LimitScope = LimitScope.RATE) -> None:
        super().__init__(message, status=status, retry_after_s=retry_after_s)
        self.scope = scope


class ServerError(RetryableError):
    """HTTP 5xx, or an answer that could not be read."""


class NetworkError(RetryableError):
    """The request never reached PiAPI (connection refused, connect or pool timeout)."""


class ProviderBusy(RetryableError):
    """A create refused because PiAPI's provider pool cannot take it now (no available
    account, or a pool account out of credits); nothing was created."""


class PermanentError(PiAPIError):
    """Sending the same request again cannot succeed."""


class InvalidRequest(PermanentError):
    """PiAPI rejected the request (HTTP 400 or an error `code`)."""


class NotFound(PermanentError):
    """PiAPI does not know this task id."""


class PlanRequired(PermanentError):
    """An upload refused for the account's plan (403 "Insufficient plan level"): uploads
    need PiAPI's Creator plan or higher. `reason` is PiAPI's own words."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message, status=status)
        self.reason = reason


class AccountError(PermanentError):
    """The key was refused or the account cannot pay: nothing will work until a human acts."""


class AmbiguousError(PiAPIError):
    """A create was (maybe) received but its answer was lost: a task may exist."""


DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0)
"""Seconds allowed for each phase of a request, unless the caller gives its own."""


@dataclass(frozen=True)
class Usage:
    """Credits a task froze and consumed (10,000,000 units = US$1)."""

    type: str
    frozen: int
    consume: int


@dataclass(frozen=True)
class TaskError:
    """PiAPI's `error` object for a failed task (and its last log entries)."""

    code: int
    message: str
    raw_message: str
    logs: tuple[str, ...] = ()
    """The task's last `data.logs` entries, read when `error` says nothing."""

    @property
    def text(self) -> str:
        """The most specific message available (bounded)."""
        words = "; ".join(m for m in (self.raw_message, self.message) if m)
        if not words:
            words = "; ".join(self.logs)
        return _bounded(words) or f"code {self.code}"


@dataclass(frozen=True)
class TaskView:
    """What PiAPI says about one task, from a create, a get or a webhook body."""

    task_id: str
    model: str
    task_type: str
    status: str
    """PiAPI's word, lower-cased (`pending`, `processing`, ...): `outcome` says what it means."""
    output: Any
    usage: Usage | None
    error: TaskError | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    input: Mapping[str, Any] | None = None
    """The input as PiAPI echoes it (normalised: defaults filled, unknown keys dropped)."""

    @property
    def outcome(self) -> Outcome:
        """What the task's status means."""
        return status_outcome(self.status)

    @property
    def created_unix(self) -> float | None:
        """`created_at` as a Unix time (None: missing or unreadable)."""
        return _unix(self.created_at)

    @property
    def has_output(self) -> bool:
        """True when the output carries a real result, not PiAPI's empty placeholders."""
        return has_content(self.output)


@dataclass(frozen=True)
class HistoryRow:
    """One task in the account's history (any field may be missing in the listing)."""

    task_id: str
    model: str
    task_type: str
    status: str
    """PiAPI's word, lower-cased (the listing says `finished` for `completed`): `outcome`
    says what it means."""
    created_at: float | None
    input: Mapping[str, Any] | None
    """The task's input, when the listing carries the task's details (PiAPI documents
    rows without it)."""
    detail_model: str = ""
    """`detail.model`, which may differ in spelling from the row's `task_model`."""

    @property
    def outcome(self) -> Outcome:
        """What the row's status means."""
        return status_outcome(self.status)


@dataclass(frozen=True)
class HistoryPage:
    """A page of GET /api/open/tasks/histories."""

    rows: list[HistoryRow]
    total: int | None
    fields: frozenset[str] = frozenset()
    """Every key the page's rows carried (see `row_fields`)."""


@dataclass(frozen=True)
class AccountInfo:
    """The parts of /account/info piapi-bulk uses (any may be missing)."""

    max_concurrent_tasks: int | None
    usd: float | None
    """The balance in US$ (`balance_usd`); None when PiAPI does not report it."""


UNITS_PER_USD = 10_000_000
"""PiAPI's points (wallet, usage): 10,000,000 = US$1."""


def balance_usd(data: Mapping[str, Any]) -> float | None:
    """The balance in US$ from /account/info's `data`: `equivalent_in_usd`, else the
    wallet's `point_remain` in dollars; None when neither is given."""
    usd = data.get("equivalent_in_usd")
    if isinstance(usd, int | float) and not isinstance(usd, bool):
        return float(usd)
    wallet = data.get("wallet")
    points = wallet.get("point_remain") if isinstance(wallet, Mapping) else None
    if isinstance(points, int | float) and not isinstance(points, bool):
        return points / UNITS_PER_USD
    return None


def has_content(output: Any) -> bool:
    """True when `output` carries a real result (some non-empty string): PiAPI's output is
    null or empty placeholders (`{"video": ""}`, zeros) until the task is done."""
    if isinstance(output, str):
        return bool(output.strip())
    if isinstance(output, dict):
        return any(has_content(v) for v in output.values())
    if isinstance(output, list):
        return any(has_content(v) for v in output)
    return False


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _bounded(text: str) -> str:
    """`text` on one line, at most MESSAGE_CHARS characters."""
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def _log_texts(logs: Any) -> tuple[str, ...]:
    """The words of the last LOG_LINES non-empty entries of `data.logs` (strings or
    objects)."""
    if not isinstance(logs, list):
        return ()
    texts: list[str] = []
    for entry in logs:
        text = entry if isinstance(entry, str) else ""
        if isinstance(entry, Mapping):
            text = next((str(entry[k]) for k in LOG_KEYS
                         if isinstance(entry.get(k), str | int | float) and str(entry[k])), "")
        if text.strip():
            texts.append(text.strip())
    return tuple(texts[-LOG_LINES:])


def _task_error(data: Mapping[str, Any]) -> TaskError | None:
    """The task's error: `data.error`, or for a failed task with an empty error, its logs."""
    raw = data.get("error") if isinstance(data.get("error"), Mapping) else {}
    assert isinstance(raw, Mapping)
    code = _int(raw.get("code"))
    message = str(raw.get("message") or "")
    raw_message = str(raw.get("raw_message") or "")
    failed = str(data.get("status") or "").strip().lower() == "failed"
    logs = _log_texts(data.get("logs")) if failed else ()
    if not (code or message or raw_message or logs):
        return None
    return TaskError(code=code, message=message, raw_message=raw_message, logs=logs)


def _time(value: Any) -> str | None:
    if not value or value == ZERO_TIME or not isinstance(value, str):
        return None
    return value


def parse_task(data: Mapping[str, Any]) -> TaskView:
    """Read the `data` object of a task envelope (or of a webhook body)."""
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ServerError("answer without a task_id")
    meta = data.get("meta") if isinstance(data.get("meta"), Mapping) else {}
    usage_raw = meta.get("usage") if isinstance(meta, Mapping) else None
    usage = None
    if isinstance(usage_raw, Mapping):
        usage = Usage(
            type=str(usage_raw.get("type") or ""),
            frozen=_int(usage_raw.get("frozen")),
            consume=_int(usage_raw.get("consume")),
        )
    error = _task_error(data)
    return TaskView(
        task_id=task_id,
        model=str(data.get("model") or ""),
        task_type=str(data.get("task_type") or ""),
        status=str(data.get("status") or "").strip().lower(),
        output=data.get("output"),
        usage=usage,
        error=error,
        created_at=_time(meta.get("created_at")) if isinstance(meta, Mapping) else None,
        started_at=_time(meta.get("started_at")) if isinstance(meta, Mapping) else None,
        ended_at=_time(meta.get("ended_at")) if isinstance(meta, Mapping) else None,
        input=data.get("input") if isinstance(data.get("input"), Mapping) else None,
    )


def _unix(value: Any) -> float | None:
    if isinstance(value, int | float) and value > 0:
        return float(value)
    text = _time(value)
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_history_row(row: Mapping[str, Any]) -> HistoryRow | None:
    """One history row: the documented snake_case listing (`task_id, task_model, action,
    status, created_at, detail{model, task_id, workflow_type}`, no input), the camelCase
    listing (`taskId, taskModel, ...`), or a row whose `detail` is the whole task."""
    detail = row.get("detail") if isinstance(row.get("detail"), Mapping) else None
    source: Mapping[str, Any] = detail or {}
    task_id = (row.get("task_id") or row.get("taskId") or source.get("task_id"))
    if not isinstance(task_id, str) or not task_id:
        return None
    meta = source.get("meta") if isinstance(source.get("meta"), Mapping) else {}
    created = _unix(row.get("created_at") or row.get("createdAt")
                    or (meta.get("created_at") if isinstance(meta, Mapping) else None))
    raw_input = source.get("input") if "input" in source else row.get("input")
    # `detail.model` first: it is the model the task was created with, where the row's own
    # `task_model` might be a family name (undocumented); both agree in every shape seen.
    model = (source.get("model") or row.get("taskModel") or row.get("task_model")
             or row.get("model") or "")
    status = str(row.get("status") or source.get("status") or "").strip().lower()
    return HistoryRow(
        task_id=task_id,
        model=str(model),
        task_type=str(row.get("action") or row.get("task_type") or source.get("task_type") or ""),
        status=status,
        created_at=created,
        input=raw_input if isinstance(raw_input, Mapping) else None,
        detail_model=str(source.get("model") or ""),
    )


def row_fields(row: Mapping[str, Any]) -> set[str]:
    """The keys a history row carries (its `detail`'s as `detail.<key>`), for the doctor."""
    keys = {str(k) for k in row}
    detail = row.get("detail")
    if isinstance(detail, Mapping):
        keys |= {f"detail.{k}" for k in detail}
    return keys


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), capped."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def refusal_reason(body: Any) -> str:
    """PiAPI's reason for refusing a request, from its JSON body: the most specific of
    `data.error.raw_message`, `data.error.message` and `data.logs`, then the top-level
    `message` when it adds something; '' when the body says nothing."""
    data = body.get("data") if isinstance(body, Mapping) else None
    specific = ""
    if isinstance(data, Mapping):
        error = data.get("error") if isinstance(data.get("error"), Mapping) else {}
        assert isinstance(error, Mapping)
        specific = next((str(error[k]) for k in ("raw_message", "message")
                         if isinstance(error.get(k), str) and error[k].strip()), "")
        specific = specific or "; ".join(_log_texts(data.get("logs")))
    top = body.get("message") if isinstance(body, Mapping) else None
    top = str(top).strip() if top else ""
    if top and top.lower() not in specific.lower():
        specific = f"{specific} ({top})" if specific else top
    return _bounded(specific)


def _message(status: int, body: Any) -> str:
    reason = refusal_reason(body)
    return f"HTTP {status}: {reason}" if reason else f"HTTP {status}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def is_account_refusal(text: str) -> bool:
    """True when a create's refusal says the account cannot pay (its balance or credit);
    False for a provider pool account out of credits (unless the text says "your")."""
    lowered = text.lower()
    if any(w in lowered for w in PROVIDER_WORDS) and "your " not in lowered:
        return False
    return any(w in lowered for w in ACCOUNT_WORDS)


def _provider_busy(text: str) -> bool:
    lowered = text.lower()
    return any(w in lowered for w in PROVIDER_WORDS) and "your " not in lowered


def raise_for_status(response: httpx.Response, *, create: bool) -> None:
    """Turn a non-2xx answer into the right error; `create` marks a paid POST."""
    status = response.status_code
    if 200 <= status < 300:
        return
    raise_error(status, _message(status, _json(response)), response.headers, create=create)


def raise_error(status: int, message: str, headers: httpx.Headers, *,
                create: bool) -> NoReturn:
    """The error for a refusal with this HTTP status (or envelope `code`) and message.

    Only a create's refusal is read for account words: a failed read or a failed task
    never stops the fleet by its text, only a refused key (401, 402, 403) does."""
    if status == 429:
        raise RateLimited(message, status=status, retry_after_s=retry_after_s(headers),
                          scope=limit_scope(message, create=create))
    if create and status in GATEWAY_TIMEOUTS:
        raise AmbiguousError(message, status=status)
    if status >= 500:
        raise ServerError(message, status=status, retry_after_s=retry_after_s(headers))
    if status in (401, 402, 403) or (create and is_account_refusal(message)):
        raise AccountError(message, status=status)
    if create and _provider_busy(message):
        raise ProviderBusy(message, status=status, retry_after_s=retry_after_s(headers))
    if status == 404:
        raise NotFound(message, status=status)
    raise InvalidRequest(message, status=status)


def read_envelope(response: httpx.Response, *, create: bool = False) -> Mapping[str, Any]:
    """The JSON envelope of a 2xx answer, checked for an error `code` (read like an HTTP
    status of that number; a 2xx-looking error code is an InvalidRequest)."""
    try:
        body = response.json()
    except ValueError as exc:
        raise ServerError(f"unreadable answer (HTTP {response.status_code})") from exc
    if not isinstance(body, Mapping):
        raise ServerError("answer is not a JSON object")
    code = body.get("code", 200)
    if _int(code) not in SUCCESS_CODES:
        status = _int(code) or 400
        raise_error(status, _message(status, body), response.headers, create=create)
    return body


UPLOAD_PATH = "/api/ephemeral_resource"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""The largest file PiAPI's upload endpoint takes (10 MB; it deletes files after 24 h)."""
DEFAULT_UPLOAD_URL = "https://upload.theapi.app"


TRANSPORT_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


def tls_verification(*urls: str) -> ssl.SSLContext | bool:
    """How a client that calls only `urls` (it follows no redirect) checks certificates: the
    default (the CA bundle, which httpx loads for each client: 18 ms of CPU) when one of them
    is https; for plain http (the emulator on loopback) a context with no CA at all, which such
    a client never uses and which would refuse any certificate if it did."""
    if any(not url.lower().startswith("http://") for url in urls):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class PiAPIClient:
    """One pooled HTTP client per process; thread-safe, as httpx.Client is."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        before_request: Callable[[str], None] | None = None,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
        upload_url: str = DEFAULT_UPLOAD_URL,
    ) -> None:
        self._before_request = before_request
        self._upload_url = upload_url.rstrip("/")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"x-api-key": api_key, "accept": "application/json"},
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
            verify=tls_verification(base_url, upload_url),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> PiAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, *, kind: str, create: bool = False,
              **kwargs: Any) -> httpx.Response:
        if self._before_request is not None:
            self._before_request(kind)
        try:
            response = self._http.request(method, path, **kwargs)
        except TRANSPORT_NOT_SENT as exc:
            raise NetworkError(f"{type(exc).__name__}: request not sent") from exc
        except httpx.TransportError as exc:
            # Sent (maybe in full) but no complete answer came back.
            if create:
                raise AmbiguousError(f"{type(exc).__name__}: no answer to create") from exc
            raise ServerError(f"{type(exc).__name__}: no answer") from exc
        raise_for_status(response, create=create)
        return response

    def create_task(
        self,
        model: str,
        task_type: str,
        input: Mapping[str, Any],
        *,
        webhook_endpoint: str | None = None,
        webhook_secret: str | None = None,
        service_mode: str | None = None,
    ) -> TaskView:
        """POST /api/v1/task. An unknown outcome raises AmbiguousError, never retried here."""
        body: dict[str, Any] = {"model": model, "task_type": task_type, "input": dict(input)}
        config: dict[str, Any] = {}
        if service_mode:
            config["service_mode"] = service_mode
        if webhook_endpoint:
            config["webhook_config"] = {
                "endpoint": webhook_endpoint, "secret": webhook_secret or "",
            }
        if config:
            body["config"] = config
        response = self._send("POST", "/api/v1/task", kind="create", create=True, json=body)
        try:
            envelope = read_envelope(response, create=True)
            data = envelope.get("data")
            if not isinstance(data, Mapping):
                raise ServerError("create answer without data")
            return parse_task(data)
        except ServerError as exc:
            # A 2xx we cannot read may still have created a task.
            raise AmbiguousError(f"unreadable answer to create: {exc}") from exc

    def upload_file(self, file_name: str, data: bytes) -> str:
        """POST {upload_url}/api/ephemeral_resource with the file (base64): the URL PiAPI
        serves it at for 24 hours. An upload creates no task and costs nothing, so an answer
        lost after sending is a ServerError (retryable), never ambiguous; a 403 is
        PlanRequired."""
        body = {"file_name": file_name, "file_data": base64.b64encode(data).decode("ascii")}
        try:
            response = self._send("POST", self._upload_url + UPLOAD_PATH, kind="upload",
                                  json=body)
            envelope = read_envelope(response)
        except AccountError as exc:
            if exc.status != 403:
                raise
            raise PlanRequired(str(exc), status=403,
                               reason=str(exc).removeprefix("HTTP 403: ")) from exc
        answer = envelope.get("data")
        url = answer.get("url") if isinstance(answer, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ServerError("upload answer without a URL")
        return url

    def get_task(self, task_id: str) -> TaskView:
        """GET /api/v1/task/{task_id}."""
        response = self._send("GET", f"/api/v1/task/{task_id}", kind="get")
        data = read_envelope(response).get("data")
        if not isinstance(data, Mapping):
            raise ServerError("get answer without data")
        return parse_task(data)

    def cancel_task(self, task_id: str) -> bool:
        """DELETE /api/v1/task/{task_id}; True when PiAPI cancelled it (only while pending)."""
        try:
            response = self._send("DELETE", f"/api/v1/task/{task_id}", kind="cancel")
            read_envelope(response)
        except InvalidRequest:
            return False
        return True

    def active_tasks(self) -> int | None:
        """Tasks in flight on the account (pending + processing, every model family), from
        GET /account/active_tasks; None when the account does not offer a readable count."""
        counts = self.active_task_counts()
        return sum(counts.values()) if counts else None

    def active_task_counts(self) -> dict[str, int] | None:
        """Pending + processing tasks per family GET /account/active_tasks reports (only the
        families it lists); None when the account does not offer a readable count."""
        try:
            response = self._send("GET", "/account/active_tasks", kind="account")
        except (NotFound, InvalidRequest):
            return None
        data = read_envelope(response).get("data")
        if not isinstance(data, Mapping):
            return None
        return {str(name): _int(family.get("pending_count")) + _int(family.get("processing_count"))
                for name, family in data.items()
                if isinstance(family, Mapping)
                and ("pending_count" in family or "processing_count" in family)} or None

    def task_history(self, model: str | None, start_time: float, end_time: float,
                     page: int = 1, page_size: int = 100) -> HistoryPage:
        """GET /api/open/tasks/histories: tasks created in [start, end], newest first, with
        `model` as the filter (None: no filter, every model). Unreadable rows are left out."""
        params: dict[str, str | int] = {"page": page, "page_size": page_size,
                                        "start_time": int(start_time),
                                        "end_time": math.ceil(end_time)}
        if model is not None:
            params["model"] = model
        response = self._send("GET", "/api/open/tasks/histories", kind="history",
                              params=params)
        data = read_envelope(response).get("data")
        rows_raw: Any = None
        total: int | None = None
        if isinstance(data, Mapping):
            rows_raw = data.get("data", data.get("list", data.get("tasks")))
            total = _int(data.get("total")) if data.get("total") is not None else None
        elif isinstance(data, list):
            rows_raw = data
        raw = [x for x in rows_raw or [] if isinstance(x, Mapping)]
        rows = [r for r in map(parse_history_row, raw) if r is not None]
        fields = frozenset(key for x in raw for key in row_fields(x))
        return HistoryPage(rows, total, fields)

    def account_info(self) -> AccountInfo:
        """GET /account/info: the concurrency limit and balance, where given."""
        response = self._send("GET", "/account/info", kind="account")
        data = read_envelope(response).get("data")
        data = data if isinstance(data, Mapping) else {}
        limit = data.get("max_concurrent_task_count")
        return AccountInfo(
            max_concurrent_tasks=_int(limit) or None if limit is not None else None,
            usd=balance_usd(data),
        )
