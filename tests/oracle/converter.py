"""Run llama.cpp's own convert_hf_to_gguf.py on the tiny models, to cross-check write_gguf.

The converter comes from the llama-cpp-python sdist on PyPI (it vendors llama.cpp with its
converter and gguf-py). The sdist is downloaded once with pip into the persistent test cache and
the converter is extracted into a temp dir only when a conversion is missing; converted files
are cached by the same key as our own files plus the sdist version, so later runs need neither
pip nor the converter. Nothing of llama.cpp is kept in the repository.

One deliberate patch: the converter identifies the BPE pre-tokenizer by hashing the token ids of
a fixed text and only knows the hashes of published vocabularies, which a 300-token vocabulary
cannot reproduce. The driver replaces that lookup (TextModel.get_vocab_base_pre) by the name
the tokenizer style declares ("qwen2", "llama-bpe", "gpt-2"); everything else — tokens, types,
merges, special ids, add_bos, chat template, tensors, metadata — is the converter's own work.

Gemma 3 needs no other patch: without a tokenizer.model, Gemma3Model.set_vocab falls back to the
same byte-level BPE path (_set_vocab_gpt2), so its tiny checkpoint carries a tokenizer.json
only. Gemma3Model also cuts token_embd to the tokenizer's size (model vocab + added tokens), so
the tiny Gemma vocabulary has no converter padding: its spare ids are <unusedN> added tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from paths import cache_dir

from .tiny_models import ARCHS, hf_tokenizer, tiny_vocab, variant_key, variant_model

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
_SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
_LLAMA_CPP_IN_SDIST = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"

# Descriptive keys the converter derives from the directory name and parameter count.
IGNORED_KEYS = frozenset({"general.name", "general.size_label", "GGUF.kv_count"})

# Runs inside the extracted llama.cpp dir; reads a JSON list of jobs on stdin so that torch and
# transformers are imported once for all conversions.
_DRIVER = r"""
import json, sys
sys.path[0:0] = ["gguf-py", "."]
import convert_hf_to_gguf as cli
from conversion.base import TextModel
current = {}
TextModel.get_vocab_base_pre = lambda self, tokenizer: current["pre"]
for job in json.load(sys.stdin):
    current["pre"] = job["pre"]
    sys.argv = ["convert_hf_to_gguf.py", job["model_dir"], "--outtype", job["outtype"],
                "--outfile", job["outfile"]]
    cli.main()
"""


def persistent_cache_dir() -> Path:
    """The test cache (paths.cache_dir()): the sdist and the converted files are kept."""
    return cache_dir()


def llama_cpp_sdist() -> Path:
    target = persistent_cache_dir() / "sdist" / _SDIST_FILE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # pip prepares the sdist's metadata (installs its build backend) before saving it:
        # about a minute, once. Only this package as source: ":all:" would build the backend's
        # own dependencies (cmake among them) from source too, which takes many minutes.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                SDIST_NAME,
                "--quiet",
                f"{SDIST_NAME}=={SDIST_VERSION}",
                "-d",
                tmp,
            ],
            check=True,
        )
        os.replace(Path(tmp) / _SDIST_FILE, target)
    return target


def extract_converter(sdist: Path, dest: Path) -> Path:
    """Extract convert_hf_to_gguf.py, conversion/ and gguf-py/ only; returns their parent."""
    wanted = (
        _LLAMA_CPP_IN_SDIST + "convert_hf_to_gguf.py",
        _LLAMA_CPP_IN_SDIST + "conversion/",
        _LLAMA_CPP_IN_SDIST + "gguf-py/gguf/",
    )
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        tar.extractall(dest, members=members, filter="data")
    root = dest / _LLAMA_CPP_IN_SDIST
    if not (root / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(f"convert_hf_to_gguf.py not found in {sdist}")
    return root


@dataclass(frozen=True)
class _Job:
    model_dir: str
    outtype: str
    outfile: str
    pre: str


def _converted_path(arch: str, variant: str, ftype: str) -> Path:
    key = hashlib.sha256(
        f"{variant_key(arch, variant, ftype)};{SDIST_NAME}=={SDIST_VERSION}".encode()
    ).hexdigest()[:16]
    return persistent_cache_dir() / "oracle-converter" / f"{arch}-{variant}-{ftype}-{key}.gguf"


def save_hf_model(arch: str, variant: str, directory: Path) -> Path:
    """The variant as a Hugging Face checkpoint dir: config, safetensors, tokenizer."""
    model = variant_model(arch, variant)
    model.save_pretrained(directory)
    hf_tokenizer(tiny_vocab(arch, model.config.vocab_size)).save_pretrained(directory)
    return directory


def converted_ggufs(requests: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], Path]:
    """convert_hf_to_gguf's output for each (arch, variant, ftype), converting what is missing."""
    out = {req: _converted_path(*req) for req in requests}
    missing = [req for req, path in out.items() if not path.exists()]
    if not missing:
        return out
    with tempfile.TemporaryDirectory(prefix="metallic-convert-") as tmp_str:
        tmp = Path(tmp_str)
        root = extract_converter(llama_cpp_sdist(), tmp / "src")
        jobs: list[_Job] = []
        for arch, variant, ftype in missing:
            model_dir = tmp / "hf" / f"{arch}-{variant}"
            if not model_dir.exists():
                save_hf_model(arch, variant, model_dir)
            jobs.append(
                _Job(
                    str(model_dir),
                    ftype.lower(),
                    str(tmp / f"{arch}-{variant}-{ftype}.gguf"),
                    ARCHS[arch].tokenizer.pre,
                )
            )
        proc = subprocess.run(
            [sys.executable, "-c", _DRIVER],
            cwd=root,
            input=json.dumps([job.__dict__ for job in jobs]),
            capture_output=True,
            text=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-4000:]}")
        for job, req in zip(jobs, missing, strict=True):
            out[req].parent.mkdir(parents=True, exist_ok=True)
            os.replace(job.outfile, out[req])
    return out


def _field_value(field: Any) -> Any:
    value = field.contents()
    # Float metadata compares by its stored bits, not by a float64 round trip.
    if isinstance(value, float):
        return np.float32(value).tobytes().hex()
    return value


TensorSummary = tuple[str, tuple[int, ...], bytes]


def gguf_summary(path: Path) -> tuple[dict[str, Any], dict[str, TensorSummary]]:
    """(metadata key -> (types, value), tensor name -> (type, GGUF shape, data bytes))."""
    reader = gguf.GGUFReader(path)
    fields = {
        key: ([t.name for t in f.types], _field_value(f))
        for key, f in reader.fields.items()
        if key not in IGNORED_KEYS
    }
    tensors = {
        t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape), bytes(np.asarray(t.data)))
        for t in reader.tensors
    }
    return fields, tensors


def compare_gguf(ours: Path, theirs: Path) -> list[str]:
    """Differences between two GGUF files: every metadata key (with its types) but the
    descriptive IGNORED_KEYS, and every tensor's name, type, shape and bytes. Tensor order and
    data offsets are not compared: llama.cpp finds tensors by name."""
    our_fields, our_tensors = gguf_summary(ours)
    their_fields, their_tensors = gguf_summary(theirs)
    diffs: list[str] = []
    for key in sorted(our_fields.keys() | their_fields.keys()):
        a, b = our_fields.get(key), their_fields.get(key)
        if a != b:
            diffs.append(f"metadata {key}: ours {str(a)[:120]} != converter {str(b)[:120]}")
    for name in sorted(our_tensors.keys() | their_tensors.keys()):
        a_t, b_t = our_tensors.get(name), their_tensors.get(name)
        if a_t is None or b_t is None:
            diffs.append(f"tensor {name}: only in {'converter' if a_t is None else 'ours'}")
        elif a_t[:2] != b_t[:2]:
            diffs.append(f"tensor {name}: ours {a_t[:2]} != converter {b_t[:2]}")
        elif a_t[2] != b_t[2]:
            diffs.append(f"tensor {name}: same type and shape {a_t[:2]}, different bytes")
    return diffs
