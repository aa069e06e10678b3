"""A fake Hugging Face Hub on 127.0.0.1, for tests/test_hub.py: it serves repos from a dict
{repo_id: {path: bytes}} the way the Hub answers huggingface_hub 2.4, and logs every request.

What huggingface_hub asks (read in its hf_api.py, file_download.py, utils/_http.py), and what
the real Hub answers, which is what we answer:

  GET  /api/models/OWNER/REPO/revision/REV    HfApi.model_info: JSON with the commit ('sha') and
                                              the files ('siblings': [{'rfilename': ...}]).
  HEAD /OWNER/REPO/resolve/REV/PATH           hf_hub_download's metadata. A GGUF is an LFS file:
                                              302 to the CDN, with X-Repo-Commit, X-Linked-Etag
                                              (the sha256) and X-Linked-Size. No X-Xet-Hash and no
                                              'xet-auth' Link, so huggingface_hub takes the plain
                                              HTTP path, not Xet (hf_xet is installed).
  GET  CDN/blobs/SHA256?response-content-disposition=...
                                              the file, from a second server: another origin, like
                                              the Hub's CDN, so the HEAD stops at the redirect (its
                                              headers are the metadata) and the token stays on the
                                              Hub. Content-Disposition names the file, which the
                                              progress bar shows.

huggingface_hub also asks, once a process, GET /api/agent-harnesses (the list of AI agents it
names in its User-Agent; best effort): a 404, as for any other path, gives it an empty list.

Errors carry the Hub's X-Error-Code, which huggingface_hub turns into its exceptions:
RepoNotFound (401 without a token, 404 with one: the Hub does not tell strangers which private
repos exist), GatedRepo (on downloads; 401 without a token, 403 with one the repo did not
accept; the listing of a gated repo is public), RevisionNotFound (404), EntryNotFound (404,
with X-Repo-Commit).

A key 'OWNER/REPO@BRANCH' adds a branch with its own files and commit. `gated` maps a repo to
the one token it accepts. `down = 503` makes the Hub (not the CDN) answer only that status.
The servers speak HTTP/1.0, one request per connection, so huggingface_hub's shared client keeps
no connection to a server of an earlier test; a silent connection is dropped after `timeout`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

Answer = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # without the query
    token: str | None  # the bearer token sent


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that hangs cannot hold up the test's end


class FakeHub:
    timeout = 10.0  # seconds a connection may stay silent

    def __init__(
        self, repos: Mapping[str, Mapping[str, bytes]], *, gated: Mapping[str, str] = {}
    ) -> None:
        self.gated = dict(gated)
        self.down: int | None = None
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self._refs: dict[tuple[str, str], tuple[str, dict[str, bytes]]] = {}
        for key, files in repos.items():
            repo, _, branch = key.partition("@")
            content = json.dumps([key, sorted((p, _sha256(b)) for p, b in files.items())])
            commit = hashlib.sha1(content.encode()).hexdigest()
            self._refs[repo, branch or "main"] = (commit, dict(files))
        self._blobs = {_sha256(b): b for _, files in self._refs.values() for b in files.values()}
        self._servers = [_Server(("127.0.0.1", 0), self._handler(name)) for name in ("hub", "cdn")]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_port}" for s in self._servers)
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in self._servers
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stops both servers (again: no-op); the endpoint then refuses connections."""
        for server, thread in zip(self._servers, self._threads, strict=True):
            if thread.is_alive():
                server.shutdown()
                server.server_close()
                thread.join(timeout=5)
                assert not thread.is_alive(), "the fake Hub's server thread did not stop"

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def requests(self, server: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._log if server in (None, r.server)]

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def downloads(self, data: bytes) -> int:
        """How many times the CDN sent these bytes."""
        path = f"/blobs/{_sha256(data)}"
        return sum(r.method == "GET" and r.path == path for r in self.requests("cdn"))

    def commit(self, repo: str, branch: str = "main") -> str:
        return self._refs[repo, branch][0]

    # --- serving ---------------------------------------------------------------------------

    def _handler(self, server: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = hub.timeout

            def do_GET(self) -> None:
                hub._serve(self, server)

            def do_HEAD(self) -> None:
                hub._serve(self, server)

            def log_message(self, *args: Any) -> None:
                pass  # the request log is hub.requests()

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, server: str) -> None:
        url = urlsplit(h.path)
        auth = h.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        with self._lock:
            self._log.append(Request(server, h.command, url.path, token))
        if server == "cdn":
            status, headers, body = self._cdn(url.path, parse_qs(url.query))
        else:
            status, headers, body = self._hub(h.command, url.path, token)
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _hub(self, method: str, path: str, token: str | None) -> Answer:
        if self.down:
            return self.down, {}, b"down"
        parts = path.split("/")[1:]  # still quoted: a revision may hold a '/' as %2F
        try:
            if method == "GET" and parts[:2] == ["api", "models"] and len(parts) in (4, 6):
                if len(parts) == 6 and parts[4] != "revision":
                    raise _Refusal(404, "", "Not found")
                repo, rev = "/".join(parts[2:4]), unquote(parts[5]) if len(parts) == 6 else "main"
                return self._model_info(repo, rev, token)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, rev = "/".join(parts[:2]), unquote(parts[3])
                return self._resolve(repo, rev, unquote("/".join(parts[4:])), token)
            raise _Refusal(404, "", "Not found")
        except _Refusal as refusal:
            return refusal.answer

    def _find(self, repo: str, rev: str, token: str | None) -> tuple[str, dict[str, bytes]]:
        """(commit, files) of a branch or commit of the repo."""
        if not any(r == repo for r, _ in self._refs):
            raise _Refusal(404 if token else 401, "RepoNotFound", "Repository not found")
        for (r, branch), (commit, files) in self._refs.items():
            if r == repo and rev in (branch, commit):
                return commit, files
        raise _Refusal(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _model_info(self, repo: str, rev: str, token: str | None) -> Answer:
        commit, files = self._find(repo, rev, token)
        info = {
            "id": repo,
            "author": repo.split("/")[0],
            "sha": commit,
            "private": False,
            "gated": "manual" if repo in self.gated else False,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()

    def _resolve(self, repo: str, rev: str, file: str, token: str | None) -> Answer:
        commit, files = self._find(repo, rev, token)
        if repo in self.gated and token != self.gated[repo]:
            message = (
                f"Access to model {repo} is restricted and you are not in the authorized list."
            )
            raise _Refusal(403 if token else 401, "GatedRepo", message)
        if file not in files:
            raise _Refusal(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit})
        data, name = files[file], PurePosixPath(file).name
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        query = urlencode({"response-content-disposition": disposition})
        location = f"{self.cdn_url}/blobs/{_sha256(data)}?{query}"
        headers = {
            "Location": location,
            "X-Repo-Commit": commit,
            "X-Linked-Etag": f'"{_sha256(data)}"',
            "X-Linked-Size": str(len(data)),
        }
        return 302, headers, f"Found. Redirecting to {location}".encode()

    def _cdn(self, path: str, query: dict[str, list[str]]) -> Answer:
        data = self._blobs.get(path.removeprefix("/blobs/"))
        if data is None:
            return 404, {}, b"NoSuchKey"
        headers = {"Content-Type": "application/octet-stream"}
        if "response-content-disposition" in query:
            headers["Content-Disposition"] = query["response-content-disposition"][0]
        return 200, headers, data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Refusal(Exception):
    """An error answer, as the Hub gives it: X-Error-Code, X-Error-Message, a JSON body."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        headers = {
            "X-Error-Message": message,
            **({"X-Error-Code": code} if code else {}),
            **headers,
        }
        self.answer: Answer = (status, headers, json.dumps({"error": message}).encode())
