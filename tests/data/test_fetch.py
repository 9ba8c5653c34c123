"""The polite fetcher against a local HTTP server: robots.txt, the per-host rate limit and
Crawl-delay, retries, errors, the size cap, redirect loops, the cache, and `graft data collect`
with URLs. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from graft.cli import main
from graft.data.collect import CollectOptions, collect
from graft.data.corpus import STATS_SUFFIX, Problems, read_corpus
from graft.data.fetch import Fetcher, FetchFailed, FetchOptions

PAGE = (Path(__file__).parent / "fixtures" / "html" / "news_article.html").read_bytes()
SENTENCE = "The small harbour town of Kellwick switched on a row of underwater turbines"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    send_length: bool = True


Route = Reply | Callable[[int], Reply]  # a fixed reply, or one chosen by the hit number (1, 2...)


class Site:
    """A local web site: routes by path, and a log of (path, time) of every request it got."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, float]] = []
        self.agents: list[str] = []
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                with site._lock:
                    site.hits.append((self.path, time.monotonic()))
                    site.agents.append(self.headers.get("User-Agent", ""))
                    count = sum(1 for p, _ in site.hits if p == self.path)
                route = site.routes.get(self.path, Reply(404, b"not found"))
                reply = route(count) if callable(route) else route
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.send_length:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading at its size cap

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self.hits]

    def times(self, path: str) -> list[float]:
        with self._lock:
            return [t for p, t in self.hits if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    server.routes["/robots.txt"] = Reply(
        body=b"User-agent: *\nDisallow: /private\n", headers={"Content-Type": "text/plain"}
    )
    server.routes["/page"] = Reply(body=PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
    server.routes["/notes"] = Reply(body=b"plain notes\n", headers={"Content-Type": "text/plain"})
    yield server
    server.close()


def _options(tmp_path: Path, **changes: object) -> FetchOptions:
    """Fast settings for tests: no pause between requests, short back-off, a private cache."""
    settings: dict[str, object] = {
        "rate": 0.0,
        "backoff": 0.01,
        "timeout": 5.0,
        "cache": tmp_path / "cache",
    }
    settings.update(changes)
    return FetchOptions(**settings)  # type: ignore[arg-type]


def test_a_page_is_fetched_with_the_user_agent(site: Site, tmp_path: Path) -> None:
    with Fetcher(_options(tmp_path, user_agent="graft-test/1.0 (+mailto:x@example.org)")) as f:
        result = f.fetch(f"{site.url}/page")
    assert result.status == 200 and result.body == PAGE and not result.from_cache
    assert result.content_type == "text/html" and result.charset == "utf-8"
    assert result.fetched_at.endswith("Z") and result.final_url == f"{site.url}/page"
    assert site.paths() == ["/robots.txt", "/page"]
    assert site.agents == ["graft-test/1.0 (+mailto:x@example.org)"] * 2


def test_robots_txt_forbids_and_the_url_is_never_requested(site: Site, tmp_path: Path) -> None:
    with Fetcher(_options(tmp_path)) as fetcher:
        with pytest.raises(FetchFailed) as caught:
            fetcher.fetch(f"{site.url}/private/secret.html")
        fetcher.fetch(f"{site.url}/page")
    assert caught.value.kind == "robots"
    assert f"{site.url}/private/secret.html" in str(caught.value)
    assert site.paths() == ["/robots.txt", "/page"]  # robots.txt read once, /private never


def test_an_unreachable_host_is_not_blamed_on_its_robots_txt(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Fetcher(_options(tmp_path, retries=0)) as fetcher:
        with pytest.raises(FetchFailed) as caught:
            fetcher.fetch(f"http://127.0.0.1:{port}/page")
    assert caught.value.kind == "connection"
    assert "robots.txt of its host could not be read (" in str(caught.value)
    assert "forbids" not in str(caught.value)


def test_a_group_for_graft_and_missing_or_failing_robots(tmp_path: Path) -> None:
    sites = [Site() for _ in range(3)]
    try:
        named, missing, failing = sites
        named.routes["/robots.txt"] = Reply(body=b"User-agent: graft\nDisallow: /\n")
        named.routes["/a"] = Reply(body=b"a", headers={"Content-Type": "text/plain"})
        missing.routes["/a"] = Reply(body=b"a", headers={"Content-Type": "text/plain"})
        failing.routes["/robots.txt"] = Reply(503, b"down")
        failing.routes["/a"] = Reply(body=b"a", headers={"Content-Type": "text/plain"})
        with Fetcher(_options(tmp_path, retries=1)) as fetcher:
            with pytest.raises(FetchFailed, match="robots.txt"):
                fetcher.fetch(f"{named.url}/a")  # our own product token is matched
            assert fetcher.fetch(f"{missing.url}/a").body == b"a"  # 404: everything allowed
            with pytest.raises(FetchFailed) as caught:
                fetcher.fetch(f"{failing.url}/a")  # 5xx: nothing allowed
        assert caught.value.kind == "robots"
        assert named.paths() == ["/robots.txt"]
        assert missing.paths() == ["/robots.txt", "/a"]
        assert failing.paths() == ["/robots.txt", "/robots.txt"]  # retried once, then given up
    finally:
        for server in sites:
            server.close()


def test_the_rate_limit_spaces_requests_to_one_host(site: Site, tmp_path: Path) -> None:
    with Fetcher(_options(tmp_path, rate=0.3, cache=None)) as fetcher:
        fetcher.fetch(f"{site.url}/page")
        fetcher.fetch(f"{site.url}/notes")
    (robots,), (page,), (notes,) = (site.times(p) for p in ("/robots.txt", "/page", "/notes"))
    assert page - robots >= 0.3 - 0.01 and notes - page >= 0.3 - 0.01


def test_crawl_delay_wins_over_a_smaller_rate(site: Site, tmp_path: Path) -> None:
    # urllib.robotparser reads whole seconds only: 1 is the smallest delay it honours.
    site.routes["/robots.txt"] = Reply(body=b"User-agent: *\nCrawl-delay: 1\n")
    with Fetcher(_options(tmp_path, rate=0.05, cache=None)) as fetcher:
        fetcher.fetch(f"{site.url}/page")
    (robots,), (page,) = site.times("/robots.txt"), site.times("/page")
    assert page - robots >= 1.0 - 0.01


def test_retries_after_503_then_succeeds(site: Site, tmp_path: Path) -> None:
    ok = Reply(body=b"finally", headers={"Content-Type": "text/plain"})
    site.routes["/flaky"] = lambda hit: Reply(503, b"busy", {"Retry-After": "0"}) if hit < 3 else ok
    with Fetcher(_options(tmp_path)) as fetcher:
        result = fetcher.fetch(f"{site.url}/flaky")
    assert result.body == b"finally" and site.paths().count("/flaky") == 3


def test_errors_are_reported_with_the_url(site: Site, tmp_path: Path) -> None:
    site.routes["/always-503"] = Reply(503, b"busy")
    site.routes["/patience"] = Reply(429, b"later", {"Retry-After": "3600"})
    with Fetcher(_options(tmp_path, retries=2)) as fetcher:
        with pytest.raises(FetchFailed) as missing:
            fetcher.fetch(f"{site.url}/nothing-here")
        with pytest.raises(FetchFailed) as busy:
            fetcher.fetch(f"{site.url}/always-503")
        with pytest.raises(FetchFailed) as later:
            fetcher.fetch(f"{site.url}/patience")
        with pytest.raises(FetchFailed) as scheme:
            fetcher.fetch("ftp://example.org/file")
    assert str(missing.value) == f"{site.url}/nothing-here: HTTP 404 Not Found"
    assert missing.value.kind == "http error" and site.paths().count("/nothing-here") == 1
    assert busy.value.kind == "http error" and site.paths().count("/always-503") == 3
    assert later.value.kind == "http error" and site.paths().count("/patience") == 1
    assert scheme.value.kind == "bad url"


def test_a_timeout_is_retried_then_reported(site: Site, tmp_path: Path) -> None:
    site.routes["/slow"] = Reply(body=b"late", delay=0.5)
    with Fetcher(_options(tmp_path, timeout=0.15, retries=1)) as fetcher:
        with pytest.raises(FetchFailed) as caught:
            fetcher.fetch(f"{site.url}/slow")
    assert caught.value.kind == "timeout" and site.paths().count("/slow") == 2


def test_the_size_cap_stops_reading(site: Site, tmp_path: Path) -> None:
    big = b"x" * 50_000
    site.routes["/declared"] = Reply(body=big, headers={"Content-Type": "text/plain"})
    site.routes["/undeclared"] = Reply(body=big, send_length=False)  # ends when the server closes
    with Fetcher(_options(tmp_path, max_bytes=10_000)) as fetcher:
        for path in ("/declared", "/undeclared"):
            with pytest.raises(FetchFailed) as caught:
                fetcher.fetch(f"{site.url}{path}")
            assert caught.value.kind == "too large" and "10,000 bytes" in str(caught.value)


def test_redirects_are_followed_and_a_loop_is_bounded(site: Site, tmp_path: Path) -> None:
    site.routes["/old"] = Reply(301, headers={"Location": "/page"})
    site.routes["/loop-a"] = Reply(302, headers={"Location": "/loop-b"})
    site.routes["/loop-b"] = Reply(302, headers={"Location": "/loop-a"})
    site.routes["/to-private"] = Reply(302, headers={"Location": "/private/x"})
    with Fetcher(_options(tmp_path, max_redirects=4)) as fetcher:
        moved = fetcher.fetch(f"{site.url}/old")
        with pytest.raises(FetchFailed) as loop:
            fetcher.fetch(f"{site.url}/loop-a")
        with pytest.raises(FetchFailed) as hidden:
            fetcher.fetch(f"{site.url}/to-private")
    assert moved.final_url == f"{site.url}/page" and moved.body == PAGE
    assert loop.value.kind == "redirects"
    assert sum(p.startswith("/loop") for p in site.paths()) == 5  # the first try and 4 hops
    assert hidden.value.kind == "robots" and "/private/x" not in site.paths()


def test_the_cache_means_a_rerun_fetches_nothing(site: Site, tmp_path: Path) -> None:
    urls = [f"{site.url}/page", f"{site.url}/notes"]
    with Fetcher(_options(tmp_path)) as fetcher:
        first = [fetcher.fetch(u) for u in urls]
    hits = len(site.hits)
    assert hits == 3  # robots.txt and two pages
    with Fetcher(_options(tmp_path)) as fetcher:
        again = [fetcher.fetch(u) for u in urls]
        assert fetcher.counts.requests == 0 and fetcher.counts.from_cache == 2
    assert len(site.hits) == hits  # zero server hits the second time
    assert all(r.from_cache for r in again)
    assert [(r.body, r.content_type, r.fetched_at) for r in again] == [
        (r.body, r.content_type, r.fetched_at) for r in first
    ]
    # Nothing but finished entries in the cache: a body and its metadata per URL.
    names = sorted(p.suffix for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert names == [".body", ".body", ".json", ".json"]


def test_collect_reads_urls_with_problems_counted(site: Site, tmp_path: Path) -> None:
    site.routes["/logo.png"] = Reply(body=b"\x89PNG", headers={"Content-Type": "image/png"})
    site.routes["/blank"] = Reply(
        body=b"<html><body></body></html>", headers={"Content-Type": "text/html"}
    )
    url_list = tmp_path / "urls.txt"
    url_list.write_text(
        "# pages to read\n"
        f"{site.url}/page\n\n"
        f"{site.url}/notes  # plain text\n"
        f"{site.url}/private/x\n"
        f"{site.url}/missing\n"
        f"{site.url}/logo.png\n"
        f"{site.url}/blank\n"
        "not-a-url\n",
        encoding="utf-8",
    )
    problems = Problems()
    options = CollectOptions(urls=url_list, fetch=_options(tmp_path))
    docs = list(collect([], problems=problems, options=options))
    assert [(d.location, d.source) for d in docs] == [
        (f"{site.url}/page", "url"),
        (f"{site.url}/notes", "url"),
    ]
    assert SENTENCE in docs[0].text and "Privacy policy" not in docs[0].text
    assert docs[1].text == "plain notes\n"
    assert all(d.fetched_at and d.licence is None for d in docs)
    assert dict(problems.counts) == {
        "robots": 1,
        "http error": 1,
        "content type": 1,
        "no text": 1,
        "bad url": 1,
    }
    assert "/private/x" not in site.paths()


def test_cli_collects_urls_and_a_rerun_uses_the_cache(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url_list = tmp_path / "urls.txt"
    url_list.write_text(f"{site.url}/page\n{site.url}/notes\n{site.url}/gone\n", "utf-8")
    out = tmp_path / "web.jsonl"
    argv = ["data", "collect", "--urls", str(url_list), "--out", str(out), "--rate", "0"]
    argv += ["--cache", str(tmp_path / "cache"), "--no-progress", "--licence", "CC0-1.0"]
    assert main(argv) == 0
    first_hits = len(site.hits)
    assert "collect: 2 documents" in capsys.readouterr().out
    docs = list(read_corpus(out))
    assert [d.location for d in docs] == [f"{site.url}/page", f"{site.url}/notes"]
    assert all(d.licence is None for d in docs)  # --licence is for local documents only
    stats = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text(encoding="utf-8"))[0]
    assert stats["rejected"] == {"http error": 1} and stats["notes"]["requests"] == first_hits
    assert main(argv) == 0
    # Only the failed URL is asked again (with its host's robots.txt): errors are not cached.
    assert site.paths()[first_hits:] == ["/robots.txt", "/gone"]
    assert [d.text for d in read_corpus(out)] == [d.text for d in docs]
    assert main([*argv, "--strict"]) == 2
    assert f"{site.url}/gone: HTTP 404 Not Found" in capsys.readouterr().err
