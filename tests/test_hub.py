"""Models by Hugging Face repo id (`hf:OWNER/REPO:QUANT`, metallic.hub), against a fake Hub on
127.0.0.1 (tests/hub_server.py) that serves tiny GGUFs the way the Hub does: the choice of file,
every error a user can meet, the cache (reuse, offline, no network) and the environment
variables of huggingface_hub, through the real huggingface_hub."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download  # noqa: F401  (imported early: see set_hf_env)

import metallic
from hub_server import FakeHub
from metallic.errors import RequestError
from metallic.hub import HfId, is_hf_id, parse_hf_id, quant_tag, resolve_hf
from small_gguf import write_small_gguf

TOKEN = "hf_acme_reader"
HF_VARIABLES = (  # cleared for every test: none of the machine's settings may leak in
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TQDM_POSITION",
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "HUGGINGFACE_CO_STAGING",
    "HF_OIDC_RESOURCE",
)


# --- the fake Hub and each test's environment ----------------------------------------------


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two real tiny models (tests/small_gguf.py), Q8_0 and F16."""
    folder = tmp_path_factory.mktemp("hub-ggufs")
    return {
        q: write_small_gguf(folder / f"{q}.gguf", qtype=GGMLQuantizationType[q]).read_bytes()
        for q in ("Q8_0", "F16")
    }


@pytest.fixture(scope="module")
def repos(ggufs: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    q8, f16 = ggufs["Q8_0"], ggufs["F16"]
    return {
        "acme/tiny-GGUF": {
            "README.md": b"# tiny\n",
            "model-Q8_0.gguf": q8,
            "model-F16.gguf": f16,
            "model-Q8_0_L.gguf": f16,  # Q8_0 must not pick it
            "mmproj-model-F16.gguf": q8,  # nor must F16 pick the projector
            "sub/dir/model-Q4_0.gguf": q8,
        },
        "acme/tiny-GGUF@v1": {"model-Q8_0.gguf": f16, "new-Q6_K.gguf": q8},  # another branch
        "acme/one-GGUF": {"tiny.Q8_0.gguf": q8, "mmproj-tiny-f16.gguf": f16},
        "acme/pref-GGUF": {"m-Q8_0.gguf": q8, "m-Q4_K_M.gguf": f16, "m-F16.gguf": f16},
        "acme/nopref-GGUF": {"m-F16.gguf": f16, "m-Q4_0.gguf": q8},
        "acme/twice-GGUF": {"a/m-Q8_0.gguf": q8, "b/m-Q8_0.gguf": q8},
        "acme/split-GGUF": {
            "big-Q8_0-00001-of-00003.gguf": q8,
            "big-Q8_0-00002-of-00003.gguf": q8,
            "big-Q8_0-00003-of-00003.gguf": q8,
            "small-Q4_0.gguf": q8,
        },
        "acme/empty": {"README.md": b"nothing yet\n"},
        "acme/gated-GGUF": {"model-Q8_0.gguf": q8},
    }


@pytest.fixture
def hub(repos: dict[str, dict[str, bytes]]) -> Iterator[FakeHub]:
    with FakeHub(repos, gated={"acme/gated-GGUF": TOKEN}) as hub:
        yield hub


def set_hf_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Sets huggingface_hub's environment variables, for this process too.

    huggingface_hub reads them once, when it is imported, into huggingface_hub.constants, which
    its functions read at each call. So we run constants.py again under the new environment,
    into a throwaway module, and set its values on the real one; monkeypatch puts the old ones
    back after the test. (Reloading the real module instead would leave this test's values to
    the next.) One import-time copy remains: utils/_http.py's Hub origins, which decide which
    redirects to follow with the token; huggingface_hub is imported at the top of this file,
    so they hold the real Hub, never the fake CDN. The subprocess tests check the real thing:
    variables set before huggingface_hub is imported."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("_hf_constants_now", hf_constants.__file__)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for name, value in vars(fresh).items():
        if name.isupper():
            monkeypatch.setattr(hf_constants, name, value)


@pytest.fixture
def hf_home(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's HF_HOME (so its own cache, HF_HOME/hub), with HF_ENDPOINT at the fake Hub."""
    for name in HF_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    set_hf_env(monkeypatch, HF_HOME=str(home), HF_ENDPOINT=hub.url)
    return home


def cached(home: Path, hub: FakeHub, repo: str, file: str, branch: str = "main") -> Path:
    """Where huggingface_hub's cache keeps a file of a commit."""
    folder = "models--" + repo.replace("/", "--")
    return home / "hub" / folder / "snapshots" / hub.commit(repo, branch) / file


def error_of(spec: str) -> str:
    with pytest.raises(RequestError) as info:
        resolve_hf(spec, progress=False)
    e = info.value  # shows no traceback of huggingface_hub's
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    message = str(info.value)
    assert "\n" not in message
    return message


def python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs Python in a new process, with only the given huggingface_hub variables."""
    base = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES}
    return subprocess.run(
        [sys.executable, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


RESOLVE = ("-c", "import sys; from metallic.hub import resolve_hf; print(resolve_hf(sys.argv[1]))")


# --- syntax --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, want",
    [
        ("acme/tiny-GGUF", HfId("acme/tiny-GGUF", "main", None, None)),
        ("hf:acme/tiny-GGUF", HfId("acme/tiny-GGUF", "main", None, None)),
        ("acme/tiny-GGUF:q8_0", HfId("acme/tiny-GGUF", "main", "q8_0", None)),
        ("acme/tiny-GGUF:m.gguf", HfId("acme/tiny-GGUF", "main", None, "m.gguf")),
        ("acme/tiny-GGUF:sub/dir/m.GGUF", HfId("acme/tiny-GGUF", "main", None, "sub/dir/m.GGUF")),
        ("acme/tiny-GGUF@v1:Q8_0", HfId("acme/tiny-GGUF", "v1", "Q8_0", None)),
        ("acme/tiny-GGUF@refs/pr/1", HfId("acme/tiny-GGUF", "refs/pr/1", None, None)),
        (
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q8_0",
            HfId("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "main", "Q8_0", None),
        ),
    ],
)
def test_syntax(spec: str, want: HfId) -> None:
    assert parse_hf_id(spec) == want
    assert is_hf_id("hf:" + spec.removeprefix("hf:"))


def test_is_hf_id() -> None:
    assert is_hf_id("hf:owner/repo") and is_hf_id("hf:")  # resolve_hf says what is wrong
    assert not is_hf_id("model.gguf") and not is_hf_id("owner/repo") and not is_hf_id(None)


@pytest.mark.parametrize(
    "name, tag",
    [
        ("Qwen2.5-0.5B-Instruct-Q8_0.gguf", "Q8_0"),
        ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("TheModel.Q5_K_S.gguf", "Q5_K_S"),
        ("d/Model.i1-IQ4_XS.gguf", "IQ4_XS"),
        ("Model-Q8_0-00002-of-00003.gguf", "Q8_0"),
        ("model.gguf", None),
    ],
)
def test_quant_tag(name: str, tag: str | None) -> None:
    assert quant_tag(name) == tag


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("", "it is empty"),
        ("hf:", "it is empty"),
        ("acme", "the repo is missing"),
        ("/tiny-GGUF", "the owner is empty"),
        ("acme/", "the repo name is empty"),
        ("acme/tiny GGUF", "contains a space"),
        ("acme/tiny-GGUF/model.gguf", "a file in the repo goes after ':'"),
        ("acme/../etc", "'..' is not allowed"),
        ("acme/a..b", "'..' is not allowed"),
        ("acme/a--b", "'a--b' is not a repo or owner name"),
        ("acme/-tiny", "'-tiny' is not a repo or owner name"),
        ("acme/tiny-GGUF@", "the revision after '@' is empty"),
        ("acme/tiny-GGUF@../main", "'..' is not allowed"),
        ("acme/tiny-GGUF@v1?x", "'v1?x' after '@' is not a revision"),
        ("acme/tiny-GGUF:", "nothing after ':'"),
        ("acme/tiny-GGUF:../x.gguf", "'../x.gguf' is not a file path"),
        ("acme/tiny-GGUF:/x.gguf", "'/x.gguf' is not a file path"),
        ("acme/tiny-GGUF:Q8-0", "neither a quant tag"),
    ],
)
def test_malformed_ids(spec: str, problem: str, hf_home: Path, hub: FakeHub) -> None:
    message = error_of(spec)
    assert problem in message and "hf:OWNER/REPO[@REVISION][:QUANT or :FILE.gguf]" in message
    assert hub.requests() == []


# --- choosing the file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, file",
    [
        ("acme/tiny-GGUF:Q8_0", "model-Q8_0.gguf"),
        ("acme/tiny-GGUF:q8_0", "model-Q8_0.gguf"),  # any case
        ("acme/tiny-GGUF:Q8_0_L", "model-Q8_0_L.gguf"),
        ("acme/tiny-GGUF:F16", "model-F16.gguf"),  # not mmproj-model-F16.gguf
        ("acme/tiny-GGUF:Q4_0", "sub/dir/model-Q4_0.gguf"),
        ("acme/tiny-GGUF:model-F16.gguf", "model-F16.gguf"),
        ("hf:acme/tiny-GGUF:sub/dir/model-Q4_0.gguf", "sub/dir/model-Q4_0.gguf"),
        ("acme/tiny-GGUF:MODEL-f16.gguf", "model-F16.gguf"),  # the repo's spelling
        ("acme/tiny-GGUF:mmproj-model-F16.gguf", "mmproj-model-F16.gguf"),  # named: allowed
        # no tag: the only model; else Q4_K_M; else Q8_0 (llama.cpp's order)
        ("acme/one-GGUF", "tiny.Q8_0.gguf"),
        ("acme/pref-GGUF", "m-Q4_K_M.gguf"),
        ("acme/tiny-GGUF", "model-Q8_0.gguf"),
    ],
)
def test_choice(
    spec: str, file: str, hf_home: Path, hub: FakeHub, repos: dict[str, dict[str, bytes]]
) -> None:
    repo = parse_hf_id(spec).repo
    path = resolve_hf(spec, progress=False)
    assert path == cached(hf_home, hub, repo, file)
    assert path.read_bytes() == repos[repo][file]


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "acme/tiny-GGUF:Q5_K_M",
            "hf:acme/tiny-GGUF:Q5_K_M: no GGUF model tagged Q5_K_M "
            "(available: F16, Q4_0, Q8_0, Q8_0_L)",
        ),
        (
            "acme/nopref-GGUF",
            "hf:acme/nopref-GGUF: the repo has 2 GGUF models and none is Q4_K_M or Q8_0: "
            "choose one with hf:acme/nopref-GGUF:QUANT (available: F16, Q4_0)",
        ),
        (
            "acme/twice-GGUF:Q8_0",
            "hf:acme/twice-GGUF:Q8_0: 2 GGUF models match (a/m-Q8_0.gguf, b/m-Q8_0.gguf): "
            "choose one with hf:acme/twice-GGUF:FILE.gguf",
        ),
        ("acme/twice-GGUF", "2 GGUF models match (a/m-Q8_0.gguf, b/m-Q8_0.gguf)"),
        ("acme/empty", "hf:acme/empty: no GGUF model in the repo (its files: README.md)"),
        (
            "acme/tiny-GGUF:nope.gguf",
            "hf:acme/tiny-GGUF:nope.gguf: no file nope.gguf in the repo (its GGUF files: "
            "mmproj-model-F16.gguf, model-F16.gguf, model-Q8_0.gguf, model-Q8_0_L.gguf, "
            "sub/dir/model-Q4_0.gguf)",
        ),
    ],
)
def test_no_single_choice(spec: str, message: str, hf_home: Path, hub: FakeHub) -> None:
    assert message in error_of(spec)
    assert hub.requests("cdn") == []


@pytest.mark.parametrize(
    "spec, part",
    [
        ("acme/split-GGUF:Q8_0", "big-Q8_0-00001-of-00003.gguf is part 1 of a model split into 3"),
        ("acme/split-GGUF", "big-Q8_0-00001-of-00003.gguf is part 1"),  # the preferred Q8_0
        ("acme/split-GGUF:big-Q8_0-00002-of-00003.gguf", "is part 2 of a model split into 3"),
    ],
)
def test_split_model_refused(spec: str, part: str, hf_home: Path, hub: FakeHub) -> None:
    message = error_of(spec)
    assert part in message and "Metallic reads single GGUF files only" in message
    assert hub.requests("cdn") == []
    # the other model of the repo is no part
    assert resolve_hf("acme/split-GGUF:Q4_0", progress=False).name == "small-Q4_0.gguf"


def test_revision(hf_home: Path, hub: FakeHub, repos: dict[str, dict[str, bytes]]) -> None:
    path = resolve_hf("acme/tiny-GGUF@v1:Q8_0", progress=False)
    assert path == cached(hf_home, hub, "acme/tiny-GGUF", "model-Q8_0.gguf", "v1")
    assert path.read_bytes() == repos["acme/tiny-GGUF@v1"]["model-Q8_0.gguf"]
    commit = hub.commit("acme/tiny-GGUF", "v1")  # a commit is a revision too
    assert resolve_hf(f"acme/tiny-GGUF@{commit}:Q8_0", progress=False) == path
    assert resolve_hf("acme/tiny-GGUF@v1:Q6_K", progress=False).name == "new-Q6_K.gguf"
    assert "no GGUF model tagged Q6_K" in error_of("acme/tiny-GGUF:Q6_K")  # not on main
    assert error_of("acme/tiny-GGUF@v9:Q8_0") == (
        "hf:acme/tiny-GGUF@v9:Q8_0: the repo has no revision 'v9'"
    )


# --- access --------------------------------------------------------------------------------


def test_repo_not_found(hf_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    want = (
        f"hf:acme/nothing:Q8_0: no repo acme/nothing at {hub.url} (if it is private, set HF_TOKEN"
    )
    assert error_of("acme/nothing:Q8_0").startswith(want)  # the Hub answers 401 to strangers
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert error_of("acme/nothing:Q8_0").startswith(want)  # and 404 with a token
    assert [r.token for r in hub.requests()[-1:]] == [TOKEN]


def test_gated_repo(
    hf_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, ggufs: dict[str, bytes]
) -> None:
    message = error_of("acme/gated-GGUF:Q8_0")  # HTTP 401 without a token
    assert message == (
        f"hf:acme/gated-GGUF:Q8_0: the repo is gated: accept its conditions at "
        f"{hub.url}/acme/gated-GGUF and set HF_TOKEN to a token of that account"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")  # HTTP 403
    assert error_of("acme/gated-GGUF:Q8_0") == message
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert resolve_hf("acme/gated-GGUF:Q8_0", progress=False).read_bytes() == ggufs["Q8_0"]
    assert hub.requests("hub")[-1].token == TOKEN
    assert {r.token for r in hub.requests("cdn")} == {None}  # the token stays on the Hub


def test_huggingface_hub_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    message = error_of("acme/tiny-GGUF:Q8_0")
    assert message.endswith("needs huggingface_hub: pip install huggingface_hub")


# --- the cache -----------------------------------------------------------------------------


def test_second_resolve_reuses_the_file(
    hf_home: Path, hub: FakeHub, ggufs: dict[str, bytes]
) -> None:
    first = resolve_hf("acme/tiny-GGUF:Q8_0", progress=False)
    assert hub.downloads(ggufs["Q8_0"]) == 1
    mtime = first.stat().st_mtime_ns
    hub.clear()
    assert resolve_hf("acme/tiny-GGUF:Q8_0", progress=False) == first
    assert resolve_hf("acme/tiny-GGUF:model-Q8_0.gguf", progress=False) == first
    assert hub.downloads(ggufs["Q8_0"]) == 0 and first.stat().st_mtime_ns == mtime
    # online, metadata only: the listing and the file's HEAD
    assert {(r.method, r.path) for r in hub.requests()} == {
        ("GET", "/api/models/acme/tiny-GGUF/revision/main"),
        ("HEAD", "/acme/tiny-GGUF/resolve/main/model-Q8_0.gguf"),
    }


def test_endpoint_is_the_fake_hub(hf_home: Path, hub: FakeHub) -> None:
    resolve_hf("acme/one-GGUF", progress=False)
    seen = {(r.server, r.method, r.path.rsplit("/", 1)[0]) for r in hub.requests()}
    assert {
        ("hub", "GET", "/api/models/acme/one-GGUF/revision"),
        ("hub", "HEAD", "/acme/one-GGUF/resolve/main"),
        ("cdn", "GET", "/blobs"),  # plain HTTP from the CDN: no Xet
    } <= seen


@pytest.mark.parametrize(
    "spec", ["acme/tiny-GGUF:Q8_0", "acme/tiny-GGUF:model-Q8_0.gguf", "acme/tiny-GGUF@v1"]
)
def test_offline_resolves_from_the_cache(
    spec: str, hf_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = resolve_hf(spec, progress=False)
    set_hf_env(monkeypatch, HF_HUB_OFFLINE="1")
    hub.clear()
    assert resolve_hf(spec, progress=False) == path
    assert hub.requests() == []


def test_offline_default_choice_is_among_cached_files(
    hf_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    f16 = resolve_hf("acme/tiny-GGUF:F16", progress=False)
    set_hf_env(monkeypatch, HF_HUB_OFFLINE="1")
    hub.clear()
    assert resolve_hf("acme/tiny-GGUF", progress=False) == f16  # the only model in the cache
    assert "is not in the Hugging Face cache" in error_of("acme/tiny-GGUF:Q8_0")
    assert hub.requests() == []


def test_offline_and_not_cached(
    hf_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_hf_env(monkeypatch, HF_HUB_OFFLINE="1")
    for spec in ("acme/tiny-GGUF:Q8_0", "acme/tiny-GGUF:model-Q8_0.gguf"):
        assert error_of(spec) == (
            f"hf:{spec} is not in the Hugging Face cache ({hf_home / 'hub'}) and offline mode "
            "is on (HF_HUB_OFFLINE): download it once online, or unset HF_HUB_OFFLINE"
        )
    assert hub.requests() == []


def test_hub_unreachable(hf_home: Path, hub: FakeHub) -> None:
    path = resolve_hf("acme/tiny-GGUF:Q8_0", progress=False)
    hub.close()  # connections to the endpoint are refused from now on
    assert resolve_hf("acme/tiny-GGUF:Q8_0", progress=False) == path
    assert resolve_hf("acme/tiny-GGUF:model-Q8_0.gguf", progress=False) == path
    message = error_of("acme/tiny-GGUF:F16")
    assert message.startswith(
        f"hf:acme/tiny-GGUF:F16: the Hugging Face Hub at {hub.url} is unreachable or down "
        "(ConnectError: [Errno "  # 111 on Linux, 61 on macOS
    )
    assert message.endswith(
        f"Connection refused) and the model is not in the cache ({hf_home / 'hub'})"
    )


def test_hub_down(hf_home: Path, hub: FakeHub) -> None:
    path = resolve_hf("acme/tiny-GGUF:Q8_0", progress=False)
    hub.down = 503
    assert resolve_hf("acme/tiny-GGUF:Q8_0", progress=False) == path
    assert f"{hub.url} is unreachable or down (HTTP 503) and" in error_of("acme/tiny-GGUF:F16")


# --- the environment, as a user sets it: before huggingface_hub is imported ----------------


def test_environment_variables_in_a_new_process(
    hub: FakeHub, tmp_path: Path, ggufs: dict[str, bytes]
) -> None:
    cache = tmp_path / "hub-cache"
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(cache)}
    online = python(*RESOLVE, "acme/one-GGUF", env=env)
    assert online.returncode == 0, online.stderr
    path = Path(online.stdout.strip())
    assert path.is_relative_to(cache) and path.read_bytes() == ggufs["Q8_0"]
    assert hub.downloads(ggufs["Q8_0"]) == 1
    hub.clear()
    offline = python(*RESOLVE, "acme/one-GGUF", env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == path and hub.requests() == []
    missing = python(*RESOLVE, "acme/tiny-GGUF:Q8_0", env={**env, "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 1 and "offline mode is on (HF_HUB_OFFLINE)" in missing.stderr
    assert hub.requests() == []


# --- progress ------------------------------------------------------------------------------


def test_progress_bar(
    hf_home: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub: a bar even without a terminal
    quiet = resolve_hf("acme/tiny-GGUF:F16", progress=False)
    assert capsys.readouterr() == ("", "")
    path = resolve_hf("acme/tiny-GGUF:Q8_0")
    out, err = capsys.readouterr()
    assert out == "" and "model-Q8_0.gguf" in err and "100%" in err  # the file, by its name
    assert path == cached(hf_home, hub, "acme/tiny-GGUF", "model-Q8_0.gguf")
    assert quiet == cached(hf_home, hub, "acme/tiny-GGUF", "model-F16.gguf")


# --- loading -------------------------------------------------------------------------------


def test_load_resolved_path(hf_home: Path, hub: FakeHub) -> None:
    model = metallic.load(resolve_hf("acme/tiny-GGUF:Q8_0", progress=False))
    assert model.n_vocab == 300  # tests/small_gguf.py's
    assert model.gguf.tensors["blk.0.attn_q.weight"].type == GGMLQuantizationType.Q8_0


def test_load_by_hf_id(hf_home: Path, hub: FakeHub) -> None:
    model = metallic.load("hf:acme/tiny-GGUF:Q8_0")
    assert model.path == cached(hf_home, hub, "acme/tiny-GGUF", "model-Q8_0.gguf")


def test_cli_by_hf_id(tmp_path: Path) -> None:
    from oracle.tiny_models import tiny_gguf  # a model with a tokenizer

    local = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    with FakeHub({"acme/tok-GGUF": {"tok-Q8_0.gguf": local.read_bytes()}}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home")}
        by_id = python(
            "-m", "metallic", "tokenize", "-m", "hf:acme/tok-GGUF:Q8_0", "Hello", env=env
        )
        assert by_id.returncode == 0, by_id.stderr
        assert hub.downloads(local.read_bytes()) == 1
    by_path = python("-m", "metallic", "tokenize", "-m", str(local), "Hello", env=env)
    assert by_path.returncode == 0 and by_id.stdout == by_path.stdout != ""
