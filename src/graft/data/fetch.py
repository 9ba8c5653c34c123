"""Fetching web pages politely, for `graft data collect --urls`.

A `Fetcher` asks each host for its robots.txt once and obeys it, waits a minimum interval
between two requests to the same host (longer when robots.txt asks for a Crawl-delay), retries
timeouts, dropped connections, 429 and 5xx answers with exponential back-off, stops reading a
body at a size cap, follows a bounded number of redirects (each hop checked against its host's
robots.txt and rate limit), and keeps every page it fetched in a local cache so a rerun asks
the network for nothing twice.

A URL that cannot be fetched raises `FetchFailed`, a DataError whose `kind` ("robots",
"http error", "timeout", "too large", ...) lets a caller count it as a problem and go on.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.robotparser
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import httpx

from graft import __version__
from graft.atomic_files import write_atomic
from graft.errors import DataError

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_USER_AGENT",
    "FetchCounts",
    "FetchFailed",
    "FetchOptions",
    "FetchResult",
    "Fetcher",
    "split_content_type",
    "utc_now",
]

# The product token "graft" is what robots.txt groups match (`User-agent: graft`). The project
# has no public home page to link, so site operators are best served by a user agent naming
# whoever runs the crawl: --user-agent "graft/0.1 (+https://example.org/contact)".
DEFAULT_USER_AGENT = f"graft/{__version__} (data collection with the graft toolkit)"
DEFAULT_CACHE = Path("~/.cache/graft/fetch")
# RFC 9309 asks crawlers to parse at least 500 KiB of a robots.txt; more is not read.
_ROBOTS_MAX_BYTES = 512 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Worth asking again: the server is overloaded or briefly broken, not refusing for good.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF = 30.0


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second, the form `fetched_at` fields use."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FetchFailed(DataError):
    """A URL could not be fetched. `kind` names the reason for counting ("robots",
    "http error", "timeout", "connection", "too large", "redirects", "bad url"); the message
    is one line naming the URL."""

    def __init__(self, url: str, kind: str, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch. rate: the least seconds between two requests to one host (robots.txt's
    Crawl-delay wins when larger); max_bytes: the largest body read (after decompression);
    timeout: seconds for connecting and for each read, and for a whole body; retries: extra
    attempts after a timeout, a dropped connection, 429 or 5xx, waiting backoff * 2**attempt
    seconds (or the server's Retry-After when it is at most max_retry_after); cache: a folder
    for fetched pages (None: no cache)."""

    user_agent: str = DEFAULT_USER_AGENT
    rate: float = 1.0
    max_bytes: int = 20_000_000
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    max_retry_after: float = 60.0
    max_redirects: int = 5
    cache: Path | None = DEFAULT_CACHE


@dataclass(frozen=True)
class FetchResult:
    """A fetched page: the URL asked for, the URL that answered (after redirects), the HTTP
    status, the Content-Type (lower case, without parameters), its charset when stated, the
    body, when it was fetched (ISO 8601 UTC) and whether it came from the local cache."""

    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    fetched_at: str
    from_cache: bool = False
    charset: str | None = None


@dataclass
class _Host:
    """What we know about one host (scheme://netloc): its robots.txt and our last request."""

    robots: urllib.robotparser.RobotFileParser | None = None
    # Why robots.txt could not be read (then nothing is fetched from the host): told as the
    # reason, since "robots.txt forbids" would blame the site for our own lost connection.
    unreachable: FetchFailed | None = None
    interval: float = 0.0
    # time.monotonic() when the last request to it ended: the interval counts from there, so
    # the server sees at least that much quiet between two requests however slow it answers.
    last_done: float | None = None


@dataclass
class FetchCounts:
    """Requests sent over the network (robots.txt included) and pages served by the cache."""

    requests: int = 0
    from_cache: int = 0


class Fetcher:
    """Fetches URLs one at a time, politely (see the module docstring). Use it as a context
    manager, or call `close()`, to release its connections."""

    def __init__(
        self, options: FetchOptions | None = None, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.options = options or FetchOptions()
        self.cache = self.options.cache.expanduser() if self.options.cache is not None else None
        self.counts = FetchCounts()
        self._hosts: dict[str, _Host] = {}
        # Redirects are followed by hand, so every hop passes robots.txt and the rate limit.
        self._client = httpx.Client(
            headers={"User-Agent": self.options.user_agent},
            timeout=httpx.Timeout(self.options.timeout),
            follow_redirects=False,
            transport=transport,
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ---- the one public operation -------------------------------------------------------

    def fetch(self, url: str) -> FetchResult:
        """The page at `url`, from the cache when it was fetched before; raises FetchFailed."""
        _check_url(url)
        cached = self._from_cache(url)
        if cached is not None:
            self.counts.from_cache += 1
            return cached
        current = url
        for _hop in range(self.options.max_redirects + 1):
            if not self._allowed(current):
                failed = self._host(current).unreachable
                if failed is not None:
                    raise FetchFailed(
                        url,
                        failed.kind,
                        f"robots.txt of its host could not be read ({failed.detail}); "
                        "nothing is fetched from it",
                    )
                raise FetchFailed(url, "robots", f"robots.txt of its host forbids {current}")
            status, headers, body = self._get(current, self.options.max_bytes, original=url)
            location = headers.get("location")
            if status in _REDIRECTS and location:
                current = urljoin(current, location)
                _check_url(current, original=url)
                continue
            if not 200 <= status < 300:
                raise FetchFailed(url, "http error", f"HTTP {status} {_reason(status)}".strip())
            content_type, charset = split_content_type(headers.get("content-type", ""))
            result = FetchResult(
                url=url,
                final_url=current,
                status=status,
                content_type=content_type,
                body=body,
                fetched_at=utc_now(),
                charset=charset,
            )
            self._to_cache(result)
            return result
        raise FetchFailed(
            url, "redirects", f"more than {self.options.max_redirects} redirects (last: {current})"
        )

    # ---- robots.txt and the per-host rate limit -----------------------------------------

    def _host(self, url: str) -> _Host:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(interval=self.options.rate)
            host.robots = self._read_robots(key, host)
            delay = host.robots.crawl_delay(self.options.user_agent)
            if delay is not None:
                host.interval = max(host.interval, float(delay))
        return host

    def _allowed(self, url: str) -> bool:
        robots = self._host(url).robots
        return robots is None or robots.can_fetch(self.options.user_agent, url)

    def _read_robots(self, origin: str, host: _Host) -> urllib.robotparser.RobotFileParser:
        """robots.txt as RFC 9309 reads it: 2xx is parsed; 4xx (none there) allows everything;
        5xx or no answer at all means the host may be down or overloaded, so nothing is fetched
        from it (as Google does)."""
        robots = urllib.robotparser.RobotFileParser(f"{origin}/robots.txt")
        url = f"{origin}/robots.txt"
        try:
            for _hop in range(self.options.max_redirects + 1):
                status, headers, body = self._get(
                    url, _ROBOTS_MAX_BYTES, host=host, original=url, truncate=True
                )
                if status in _REDIRECTS and headers.get("location"):
                    url = urljoin(url, headers["location"])
                    continue
                break
            else:
                status = 500  # a redirect loop: as good as unreachable
        except FetchFailed as err:
            status, body = 500, b""  # no answer at all: unreachable
            host.unreachable = err
        if 200 <= status < 300:
            robots.parse(body.decode("utf-8", errors="replace").splitlines())
        elif status >= 500:
            robots.parse(["User-agent: *", "Disallow: /"])
        else:
            robots.parse([])  # no rules: everything allowed
        return robots

    def _wait_turn(self, host: _Host) -> None:
        if host.last_done is not None:
            pause = host.last_done + host.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    # ---- one GET, with retries ------------------------------------------------------------

    def _get(
        self,
        url: str,
        max_bytes: int,
        *,
        original: str,
        host: _Host | None = None,
        truncate: bool = False,
    ) -> tuple[int, httpx.Headers, bytes]:
        """(status, headers, body) of one GET of `url`, retrying what may pass; a redirect is
        returned, not followed. `host` is given while that host's robots.txt is being read;
        `truncate` keeps the first max_bytes of a longer body instead of failing."""
        host = host or self._host(url)
        attempts = self.options.retries + 1
        for attempt in range(attempts):
            self._wait_turn(host)
            last = attempt == attempts - 1
            try:
                status, headers, body = self._get_once(url, max_bytes, original, truncate, host)
            except httpx.TimeoutException as exc:
                if last:
                    raise FetchFailed(original, "timeout", _timeout_detail(self, exc)) from exc
                self._back_off(attempt, None)
                continue
            except httpx.TransportError as exc:
                if last:
                    raise FetchFailed(
                        original, "connection", f"cannot connect ({type(exc).__name__}: {exc})"
                    ) from exc
                self._back_off(attempt, None)
                continue
            if status in _RETRY_STATUSES and not last:
                wait = _retry_after(headers.get("retry-after"))
                if wait is not None and wait > self.options.max_retry_after:
                    return status, headers, body  # the server asks for more patience than we have
                self._back_off(attempt, wait)
                continue
            return status, headers, body
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _get_once(
        self, url: str, max_bytes: int, original: str, truncate: bool, host: _Host
    ) -> tuple[int, httpx.Headers, bytes]:
        self.counts.requests += 1
        deadline = time.monotonic() + self.options.timeout
        try:
            return self._read(url, max_bytes, original, truncate, deadline)
        finally:
            # The host's quiet interval counts from the end of this request, whatever came of it.
            host.last_done = time.monotonic()

    def _read(
        self, url: str, max_bytes: int, original: str, truncate: bool, deadline: float
    ) -> tuple[int, httpx.Headers, bytes]:
        with self._client.stream("GET", url) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes and not truncate:
                raise FetchFailed(original, "too large", _too_large(max_bytes))
            chunks: list[bytes] = []
            size = 0
            # iter_bytes undoes gzip/brotli, so the cap holds for what we keep in memory.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    if truncate:
                        chunks.append(chunk[: max_bytes - size])
                        break
                    raise FetchFailed(original, "too large", _too_large(max_bytes))
                if time.monotonic() > deadline:
                    # httpx's timeout is per read; a server trickling bytes would never end.
                    raise httpx.ReadTimeout("the body took longer than the timeout")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _back_off(self, attempt: int, retry_after: float | None) -> None:
        wait = min(self.options.backoff * 2**attempt, _MAX_BACKOFF)
        if retry_after is not None:
            wait = max(wait, retry_after)
        time.sleep(wait)

    # ---- the cache ------------------------------------------------------------------------

    def _cache_paths(self, url: str) -> tuple[Path, Path] | None:
        if self.cache is None:
            return None
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        folder = self.cache / key[:2]
        return folder / f"{key}.body", folder / f"{key}.json"

    def _from_cache(self, url: str) -> FetchResult | None:
        paths = self._cache_paths(url)
        if paths is None or not paths[1].is_file():
            return None
        body_path, meta_path = paths
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            body = body_path.read_bytes()
        except (OSError, ValueError):
            return None  # a damaged entry is fetched again and rewritten
        if meta.get("url") != url or len(body) != meta.get("size"):
            return None
        return FetchResult(
            url=url,
            final_url=meta["final_url"],
            status=meta["status"],
            content_type=meta["content_type"],
            body=body,
            fetched_at=meta["fetched_at"],
            from_cache=True,
            charset=meta.get("charset"),
        )

    def _to_cache(self, result: FetchResult) -> None:
        paths = self._cache_paths(result.url)
        if paths is None:
            return
        body_path, meta_path = paths
        meta = {
            "url": result.url,
            "final_url": result.final_url,
            "status": result.status,
            "content_type": result.content_type,
            "charset": result.charset,
            "fetched_at": result.fetched_at,
            "size": len(result.body),
        }
        try:
            # The body first: an entry counts only once its metadata, written last, is there.
            write_atomic(body_path, result.body)
            write_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
        except OSError as exc:
            raise DataError(
                f"{self.cache}: cannot write the fetch cache ({exc.strerror or exc}); "
                "give a writable --cache folder"
            ) from exc


def _check_url(url: str, *, original: str | None = None) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        where = original or url
        raise FetchFailed(where, "bad url", f"not an http(s) URL: {url!r}")


def split_content_type(header: str) -> tuple[str, str | None]:
    """('text/html', 'utf-8') from 'text/html; charset=UTF-8'."""
    kind, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'").lower()
    return kind.strip().lower(), charset


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _too_large(max_bytes: int) -> str:
    return f"body larger than {max_bytes:,} bytes (raise --max-bytes to keep it)"


def _timeout_detail(fetcher: Fetcher, exc: Exception) -> str:
    tries = fetcher.options.retries + 1
    return f"timed out after {tries} tries of {fetcher.options.timeout:g} s ({type(exc).__name__})"
