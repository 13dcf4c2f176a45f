"""What a job is, and the checks a new job must pass before it reaches the database.

The same limits are enforced again by the table's CHECK constraints, because
other MobVibe parts insert jobs directly.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from mobvibe.errors import InvalidJobError

PRIORITY_MIN, PRIORITY_MAX = 0, 10
PRIORITY_DEFAULT = 0
MAX_RETRIES_MIN, MAX_RETRIES_MAX = 1, 100
MAX_RETRIES_DEFAULT = 3
PROMPT_MAX_BYTES = 1024 * 1024
IDEMPOTENCY_KEY_MAX = 200  # characters
ID_PREFIX_MIN = 4  # hex digits that name a job or a session, as git asks of a hash
# The database refuses a run_at more than a year ahead of its clock (0010); a longer
# delay is refused here, before a number too large for an interval reaches it.
DELAY_MAX = 365 * 86400.0


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job: what a handler gets, and the lease that fences its writes."""

    id: uuid.UUID
    session_id: uuid.UUID
    prompt: str
    lease_token: uuid.UUID
    attempt: int
    retry_count: int
    max_retries: int
    priority: int


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue. session_id None creates a new session for it.

    idempotency_key: a second job with the same key in the same session is no
    new job (the enqueue returns the first one's id).
    """

    prompt: str
    session_id: uuid.UUID | str | None = None
    priority: int = PRIORITY_DEFAULT
    max_retries: int = MAX_RETRIES_DEFAULT
    run_at: datetime | None = None
    delay: float = 0.0
    idempotency_key: str | None = None

    def validated(self) -> NewJob:
        """This job with checked fields; InvalidJobError names the first bad one."""
        return NewJob(
            prompt=validate_prompt(self.prompt),
            session_id=None
            if self.session_id is None
            else parse_uuid(self.session_id, "session id"),
            priority=_int_in_range("priority", self.priority, PRIORITY_MIN, PRIORITY_MAX),
            max_retries=_int_in_range(
                "max_retries", self.max_retries, MAX_RETRIES_MIN, MAX_RETRIES_MAX
            ),
            run_at=_aware(self.run_at),
            delay=_delay(self.delay),
            idempotency_key=validate_idempotency_key(self.idempotency_key),
        )


def validate_prompt(prompt: object) -> str:
    """The prompt, if it is non-empty text of at most 1 MiB without NUL; else InvalidJobError."""
    if not isinstance(prompt, str):
        raise InvalidJobError(f"prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidJobError("prompt is empty or only whitespace: a job needs a prompt")
    nul = prompt.find("\x00")
    if nul >= 0:
        raise InvalidJobError(
            f"prompt contains a NUL character at position {nul}; PostgreSQL text cannot store it"
        )
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidJobError(
            f"prompt is not valid UTF-8 (lone surrogate at position {exc.start})"
        ) from None
    if size > PROMPT_MAX_BYTES:
        raise InvalidJobError(f"prompt is {size} bytes; the limit is {PROMPT_MAX_BYTES} (1 MiB)")
    return prompt


def validate_idempotency_key(key: object) -> str | None:
    """The key (None: none), if it is text of 1 to 200 characters without NUL."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise InvalidJobError(f"idempotency key must be text, got {type(key).__name__}")
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidJobError(
            f"idempotency key must be 1 to {IDEMPOTENCY_KEY_MAX} characters, got {len(key)}"
        )
    if "\x00" in key:
        raise InvalidJobError(
            "idempotency key contains a NUL character; PostgreSQL cannot store it"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJobError(
            f"idempotency key is not valid UTF-8 (lone surrogate at position {exc.start})"
        ) from None
    return key


def parse_uuid(value: object, what: str = "job id") -> uuid.UUID:
    """`value` as a UUID; InvalidJobError if it is not one."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    shown = repr(value)[:40]
    raise InvalidJobError(f"{what} must be a UUID, got {shown}")


def prefix_bounds(text: str, what: str = "job id") -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and the highest id that start with `text`, the first hex digits of a UUID
    as `jobs list` shows them (dashes where a UUID has them); InvalidJobError if it is not
    such a start."""
    start = text.strip().lower()
    digits = start.replace("-", "")
    canonical = str(uuid.UUID(int=0)).replace("0", "x")  # xxxxxxxx-xxxx-...
    shaped = len(start) <= len(canonical) and all(
        (c == "-") == (shape == "-") for c, shape in zip(start, canonical, strict=False)
    )
    hex_only = all(c in "0123456789abcdef" for c in digits)
    if not (shaped and hex_only and ID_PREFIX_MIN <= len(digits) < 32):
        raise InvalidJobError(
            f"{what} must be a UUID or the start of one (at least {ID_PREFIX_MIN} hex digits), "
            f"got {repr(text)[:40]}"
        )
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def _int_in_range(name: str, value: object, low: int, high: int) -> int:
    # bool is an int in Python; True as a priority is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _aware(run_at: datetime | None) -> datetime | None:
    if run_at is not None and (run_at.tzinfo is None or run_at.utcoffset() is None):
        raise InvalidJobError("run_at must be timezone-aware (for example datetime.now(UTC))")
    return run_at


def _delay(delay: object) -> float:
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise InvalidJobError(f"delay must be a number of seconds >= 0, got {delay!r}")
    if not delay <= DELAY_MAX:  # not: inf too
        raise InvalidJobError(
            f"delay must be at most a year ({DELAY_MAX:g} s): the queue schedules a job at "
            f"most a year ahead, got {delay!r}"
        )
    return float(delay)


def lease_token(lease_key: uuid.UUID, job_id: uuid.UUID, attempt: int) -> uuid.UUID:
    """The lease token of attempt `attempt` of `job_id` claimed with `lease_key`: what the
    claim stored (public.queue_lease_token), known to whoever chose the key and nobody else."""
    digest = hashlib.sha256(f"{lease_key} {job_id} {attempt}".encode()).digest()
    return uuid.UUID(bytes=digest[:16])
