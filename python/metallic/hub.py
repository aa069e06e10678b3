"""Models from the Hugging Face Hub, named by repository id (like llama.cpp's `-hf`):

    hf:OWNER/REPO              the repo's GGUF model: the only one; among several, the Q4_K_M
                               one, else the Q8_0 one (llama.cpp's preference); else an error
                               listing the quant tags to choose from
    hf:OWNER/REPO:QUANT        the GGUF whose quant tag is QUANT, in any case:
                               hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q8_0
    hf:OWNER/REPO:FILE.gguf    that file, also in a subfolder: hf:OWNER/REPO:sub/dir/FILE.gguf
    hf:OWNER/REPO@REVISION...  a branch, tag or commit instead of main: hf:OWNER/REPO@v2:Q8_0

A file's quant tag is the last part of its name split at '-' and '.', once '.gguf' and a split
suffix are removed: 'Qwen2.5-0.5B-Instruct-Q8_0.gguf' and 'model.q8_0.gguf' are Q8_0. QUANT must
be the whole tag: Q8_0 does not pick 'model-Q8_0_L.gguf'; two files with that tag (in two
folders) are an error that lists them. Side files (mmproj, imatrix, speculative-decoding heads:
llama.cpp's list) are never picked. Where llama.cpp falls back to the first GGUF listed, we ask:
the order of a listing is no choice. Split models ('-00001-of-00003.gguf') are refused: Metallic
reads single files (llama-gguf-split --merge joins the parts).

huggingface_hub downloads the file into its cache (HF_HOME, HF_HUB_CACHE) with its progress bar,
from HF_ENDPOINT, with HF_TOKEN for gated and private repos; later runs reuse the file. Offline
(HF_HUB_OFFLINE=1), or when the Hub cannot be reached, an id resolves from the cache alone, among
the files downloaded before, without any request.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import RequestError

PREFIX = "hf:"
SYNTAX = (
    "hf:OWNER/REPO[@REVISION][:QUANT or :FILE.gguf], e.g. hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q8_0"
)
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # llama.cpp's choice when no tag is given
SIDE_FILES = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")  # not models

_NAME = re.compile(r"\w(?:[\w.-]*\w)?", re.ASCII)  # the Hub's rule, with no '--' or '..'
_REVISION = re.compile(r"[\w./-]+", re.ASCII)
_TAG = re.compile(r"\w+", re.ASCII)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def is_hf_id(text: object) -> bool:
    """Whether `text` names a Hub model (starts with 'hf:'); resolve_hf checks the rest."""
    return isinstance(text, str) and text.startswith(PREFIX)


@dataclass(frozen=True)
class HfId:
    repo: str
    revision: str
    quant: str | None  # as given; compared in upper case
    file: str | None

    def __str__(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        pick = self.quant or self.file
        return f"{PREFIX}{self.repo}{at}" + (f":{pick}" if pick else "")


def parse_hf_id(spec: str) -> HfId:
    """The parts of `spec` (with or without 'hf:'); RequestError naming what is wrong."""
    text = spec.removeprefix(PREFIX)

    def bad(problem: str) -> RequestError:
        return RequestError(f"bad Hugging Face model id '{PREFIX}{text}': {problem}; use {SYNTAX}")

    if not text:
        raise bad("it is empty")
    if any(c.isspace() for c in text):
        raise bad("it contains a space")
    head, colon, pick = text.partition(":")
    if ".." in head:
        raise bad("'..' is not allowed in a repo id")
    repo, at, revision = head.partition("@")
    owner, slash, name = repo.partition("/")
    if not slash:
        raise bad("the repo is missing (OWNER/REPO)")
    if not owner or not name:
        raise bad(f"the {'owner' if not owner else 'repo name'} is empty")
    if "/" in name:
        raise bad(f"'{repo}' is not OWNER/REPO (a file in the repo goes after ':')")
    for part in (owner, name):
        if not _NAME.fullmatch(part) or "--" in part:
            raise bad(f"'{part}' is not a repo or owner name (letters, digits, '-', '_', '.')")
    if at and not revision:
        raise bad("the revision after '@' is empty")
    if revision and not _REVISION.fullmatch(revision):
        raise bad(f"'{revision}' after '@' is not a revision (a branch, tag or commit)")
    if colon and not pick:
        raise bad("nothing after ':' (a quant such as Q8_0, or a FILE.gguf)")
    if pick.lower().endswith(".gguf"):
        parts = pick.split("/")
        if "\\" in pick or any(p in ("", ".", "..") for p in parts):
            raise bad(f"'{pick}' is not a file path in the repo")
        return HfId(repo, revision or "main", None, pick)
    if pick and not _TAG.fullmatch(pick):
        raise bad(f"'{pick}' is neither a quant tag (such as Q8_0) nor a file ending in .gguf")
    return HfId(repo, revision or "main", pick or None, None)


def quant_tag(path: str) -> str | None:
    """'dir/Model-7B-Q4_K_M-00001-of-00002.gguf' -> 'Q4_K_M' (None if the name has no '-'/'.')."""
    stem = re.sub(r"(-\d{5}-of-\d{5})?\.gguf$", "", PurePosixPath(path).name, flags=re.IGNORECASE)
    m = re.search(r"[-.](\w+)$", stem, re.ASCII)
    return m[1].upper() if m else None


def _is_model(path: str) -> bool:
    name = PurePosixPath(path).name.lower()
    return name.endswith(".gguf") and not any(s in name for s in SIDE_FILES)


class NoMatch(RequestError):
    """No file of the repo is the one asked for."""


def choose_file(hid: HfId, files: list[str]) -> str:
    """The repo file `hid` names, given the repo's files (NoMatch if none, RequestError if
    several)."""
    if hid.file:
        if hid.file in files:
            return hid.file
        same = [f for f in files if f.lower() == hid.file.lower()]  # the Hub's paths have a case
        if len(same) == 1:
            return same[0]
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        raise NoMatch(f"{hid}: no file {hid.file} in the repo ({_listing(ggufs, 'GGUF ')})")
    # a split model counts once, by its first part
    models = [f for f in files if _is_model(f) and not _part_after_first(f)]
    if not models:
        raise NoMatch(f"{hid}: no GGUF model in the repo ({_listing(files)})")
    if hid.quant:
        found = [f for f in models if quant_tag(f) == hid.quant.upper()]
        if not found:
            raise NoMatch(f"{hid}: no GGUF model tagged {hid.quant} ({_tags(models)})")
    elif len(models) == 1:
        found = models
    else:
        for q in DEFAULT_QUANTS:
            found = [f for f in models if quant_tag(f) == q]
            if found:
                break
        else:
            raise RequestError(
                f"{hid}: the repo has {len(models)} GGUF models and none is "
                f"{' or '.join(DEFAULT_QUANTS)}: choose one with {hid}:QUANT ({_tags(models)})"
            )
    if len(found) > 1:
        raise RequestError(
            f"{hid}: {len(found)} GGUF models match ({', '.join(found)}): "
            f"choose one with {PREFIX}{hid.repo}:FILE.gguf"
        )
    return found[0]


def _part_after_first(path: str) -> bool:
    m = _SPLIT.search(path)
    return m is not None and int(m[1]) != 1


def _listing(files: list[str], kind: str = "", limit: int = 12) -> str:
    if not files:
        return f"it has no {kind}files"
    more = f", ... ({len(files) - limit} more)" if len(files) > limit else ""
    return f"its {kind}files: " + ", ".join(files[:limit]) + more


def _tags(models: list[str]) -> str:
    # a model without a tag is shown by its name
    return "available: " + ", ".join(sorted({quant_tag(f) or f for f in models}))


def refuse_split(hid: HfId, file: str) -> None:
    m = _SPLIT.search(file)
    if m:
        raise RequestError(
            f"{hid}: {file} is part {int(m[1])} of a model split into {int(m[2])} files; "
            "Metallic reads single GGUF files only (join the parts with llama-gguf-split "
            "--merge, or choose another quant)"
        )


def resolve_hf(spec: str, *, progress: bool = True) -> Path:
    """The local path of the GGUF that `spec` names (the text after 'hf:', see the module's
    doc), downloaded first if it is not in the Hugging Face cache. RequestError for a bad id
    and for every failure a user can meet (no such repo or file, gated, offline, no network)."""
    hid = parse_hf_id(spec)
    try:
        from huggingface_hub import HfApi, errors, hf_hub_download
    except ImportError:
        raise RequestError(
            f"{hid}: loading models from the Hugging Face Hub needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from None

    unavailable: Exception | None = None  # why we cannot list the repo on the Hub
    try:
        try:
            info = HfApi().model_info(hid.repo, revision=hid.revision)
            files = [s.rfilename for s in info.siblings or []]
        except (errors.OfflineModeIsEnabled, errors.HfHubHTTPError, *_transport_errors()) as e:
            if isinstance(e, errors.HfHubHTTPError) and _status(e) < 500:
                raise
            # offline, no network, or the Hub is down: choose among the files downloaded before
            unavailable, files = e, _cached_files(hid, e)
        try:
            file = choose_file(hid, files)
        except NoMatch:
            if unavailable is None:
                raise
            raise _not_cached(hid, unavailable) from None  # the Hub may well have it
        refuse_split(hid, file)
        # the user's revision, not the listing's commit: only then does huggingface_hub record
        # which commit the branch is at (refs/), which offline runs need
        path = hf_hub_download(
            hid.repo,
            file,
            revision=hid.revision,
            local_files_only=unavailable is not None,
            tqdm_class=None if progress else _silent_tqdm(),
        )
    except errors.HfHubHTTPError as e:
        raise _http_error(hid, e) from None
    except errors.LocalEntryNotFoundError as e:
        raise _not_cached(hid, e) from None
    return Path(path)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection errors of the HTTP client huggingface_hub uses: httpx2 (2.x) or httpx
    (1.x); whichever are installed."""
    kinds: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def _cached_files(hid: HfId, why: Exception) -> list[str]:
    """The GGUF files of `hid`'s revision in the cache (no request: local_files_only)."""
    from huggingface_hub import errors, snapshot_download

    try:
        folder = snapshot_download(hid.repo, revision=hid.revision, local_files_only=True)
    except errors.IncompleteSnapshotError as e:
        folder = e.snapshot_path  # some files of the repo are missing: the others still count
    except errors.LocalEntryNotFoundError:
        raise _not_cached(hid, why) from None
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gguf"))


def _not_cached(hid: HfId, why: BaseException) -> RequestError:
    from huggingface_hub import constants, errors

    cache = constants.HF_HUB_CACHE
    if constants.is_offline_mode():
        return RequestError(
            f"{hid} is not in the Hugging Face cache ({cache}) and offline mode is on "
            "(HF_HUB_OFFLINE): download it once online, or unset HF_HUB_OFFLINE"
        )
    # huggingface_hub wraps the connection error, and httpx2's status error in its own
    while not isinstance(why, errors.HfHubHTTPError) and why.__cause__ is not None:
        why = why.__cause__
    if isinstance(why, errors.HfHubHTTPError):
        reason = f"HTTP {_status(why)}"
    else:
        reason = f"{type(why).__name__}: {_first_line(why)}"
    return RequestError(
        f"{hid}: the Hugging Face Hub at {constants.ENDPOINT} is unreachable or down ({reason}) "
        f"and the model is not in the cache ({cache})"
    )


def _http_error(hid: HfId, e: Any) -> RequestError:
    from huggingface_hub import constants, errors

    endpoint, status = constants.ENDPOINT, _status(e)
    if isinstance(e, errors.GatedRepoError):
        return RequestError(
            f"{hid}: the repo is gated: accept its conditions at {endpoint}/{hid.repo} and set "
            "HF_TOKEN to a token of that account"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return RequestError(
            f"{hid}: no repo {hid.repo} at {endpoint} (if it is private, set HF_TOKEN to a "
            "token that can read it)"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return RequestError(f"{hid}: the repo has no revision '{hid.revision}'")
    if isinstance(e, errors.RemoteEntryNotFoundError):
        return RequestError(f"{hid}: the file is not in the repo")
    if status in (401, 403):
        return RequestError(
            f"{hid}: {endpoint} refused access (HTTP {status}): set HF_TOKEN to a valid token "
            "that can read the repo"
        )
    return RequestError(f"{hid}: the Hugging Face Hub at {endpoint} answered HTTP {status}")


def _status(e: Any) -> int:
    return e.response.status_code if e.response is not None else 0


def _first_line(e: BaseException) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), "")


def _silent_tqdm() -> Any:
    from functools import partial

    from tqdm.auto import tqdm

    # huggingface_hub decides `disable` for its own tqdm class only: a bar of this one stays off
    return partial(tqdm, disable=True)
