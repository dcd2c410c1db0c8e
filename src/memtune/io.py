"""save / load: a folder with the stored tensors (safetensors, never pickle) and a JSON config.

    out/
      memtune_config.json        method configs, library version, base-model identity, weights checksum
      memtune_weights-<sha256 prefix>.safetensors   "methods.<key>.<name>", "backbone.<name>", "head.<name>"
      .memtune-save.lock         locked by each save, so that processes saving into one folder take turns

Each file is written to a temporary name and renamed into place: first the weights, under a name that
holds their checksum, then the config that names them; weights files no config names are removed last.
A crash at any point leaves the old checkpoint or the new one loadable, never a mix. A temporary is
named ``.<file>.<host>.<pid>.<random>.tmp``; one left by a killed writer (a pid of this host that is gone)
is removed by the next write of that file.

Locking: ``save`` holds an exclusive ``flock`` on ``.memtune-save.lock`` from its first write to its last
removal, so concurrent saves into one folder run one after the other and the last one wins whole.
``load`` takes no lock (a read-only folder loads): if the weights file its config names disappears or
fails its checksum because a save replaced the checkpoint meanwhile, it reads the config again and
retries, a few times.

Non-finite values: every stored tensor must be floating point and finite. ``save`` refuses NaN or inf
(a diverged run) and ``load`` refuses a checkpoint holding them, unless called with ``allow_non_finite=True``.
Everything ``load`` reads is checked (entry kinds, file name, checksum, tensor names, dtypes, shapes)
before it is used: a damaged checkpoint raises ``CheckpointError`` (a model lacking a module a method
needs, ``ArchitectureError``) and leaves the model untouched.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from .arch import arch_for, dims_of
from .errors import ArchitectureError, CheckpointError, MemtuneError
from .methods.base import MethodConfig, Recipe
from .params import parameter_report
from .settings import shown
from .tuning import STATE_ATTR, attach, detach, identity_of, is_transformers_model, method_parameters, state_of
from .version import FORMAT_VERSION, __version__

try:
    import fcntl
except ImportError:  # not POSIX (Windows): saves into one folder are not serialised
    fcntl = None

CONFIG_FILE = "memtune_config.json"
WEIGHTS_PREFIX = "memtune_weights"
LOCK_FILE = ".memtune-save.lock"
_IDENTITY_KEYS = ("model_type", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size", "fingerprint")
_WEIGHTS_NAME = re.compile(re.escape(WEIGHTS_PREFIX) + r"-[0-9a-f]{16}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ_ATTEMPTS = 5  # reads of a checkpoint that concurrent saves keep replacing, before giving up


def _host() -> str:
    """This machine's name as it appears in temporary file names (letters, digits, '-' and '_' only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


def _temp_stem(name: str) -> str:
    """The start of ``name`` that temporaries carry: at most 100 bytes, so the temporary's name stays valid."""
    return name.encode()[:100].decode(errors="ignore")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running (another user's process counts as running)."""
    if pid <= 0:
        return True  # 0 and negative numbers address process groups: never ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` that writers on this host left when they died (their pid is gone)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    pattern = re.compile(re.escape(f".{_temp_stem(path.name)}.{_host()}.") + r"([0-9]{1,10})\.[0-9a-f]+\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):  # another writer may have removed it first
                (path.parent / name).unlink()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The data go to ``.<name>.<host>.<pid>.<random>.tmp`` (mode 0666 less the umask, as any new file), are
    synced and renamed over ``path``. Temporaries of ``path`` left by dead writers of this host go first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.parent / f".{_temp_stem(path.name)}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _save_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s lock file: one save at a time, across processes and threads."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: flock needs no write access (NFS's emulation does)
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(folder: Path) -> None:
    """Make the renames into ``folder`` durable before older files are removed (where the platform allows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _listing(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """``"<name> (<n> of <size> values)"`` for every floating-point tensor holding NaN or inf, by name."""
    found = []
    for name, t in sorted(tensors.items()):
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            found.append(f"{name} ({bad} of {t.numel()} values)")
    return found


def stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything a trained model needs beyond its backbone, under save-file names (copies on the CPU)."""
    state = state_of(model)
    params = dict(model.named_parameters())
    tensors = {}
    for key, method in state.methods.items():
        tensors.update({f"methods.{key}.{n}": t for n, t in method.stored_state().items()})
        tensors.update({f"backbone.{n}": params[n] for n in state.backbone_names[key]})
    tensors.update({f"head.{n}": params[n] for n in state.head_names})
    meta = [k for k, v in tensors.items() if v.is_meta]
    if meta:
        raise CheckpointError(
            f"cannot save: {len(meta)} stored tensor(s) are on the meta device and hold no values ({_listing(meta)}); "
            f"give the model real weights first (from_pretrained without a meta device_map, or to_empty() and a "
            f"state dict), attach, train, then save"
        )
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save(model: nn.Module, path: str | os.PathLike, *, allow_non_finite: bool = False) -> Path:
    """Save the tuned parameters of ``model`` (not its backbone) to the folder ``path``; returns it.

    Refuses tensors holding NaN or inf (naming them) unless ``allow_non_finite=True``. Processes saving
    into one folder at once take turns (a lock file); the last save wins whole. A failure to write (disk
    full, no permission) raises ``CheckpointError`` and leaves the previous checkpoint loadable."""
    from safetensors.torch import save as to_safetensors

    state = state_of(model)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder; choose another path")
    tensors = stored_tensors(model)
    bad = [] if allow_non_finite else _non_finite(tensors)
    if bad:
        raise CheckpointError(
            f"cannot save: {len(bad)} stored tensor(s) hold NaN or inf: {_listing(bad)}. The training diverged "
            f"(lower the learning rate, check the data); pass allow_non_finite=True to save them anyway"
        )
    weights = to_safetensors(tensors, metadata={"format": "pt", "memtune_version": __version__})
    digest = hashlib.sha256(weights).hexdigest()
    weights_file = f"{WEIGHTS_PREFIX}-{digest[:16]}.safetensors"
    config = {
        "format_version": FORMAT_VERSION,
        "memtune_version": __version__,
        "recipe": state.recipe_name,
        "budget": state.recipe_budget,
        "train_head": state.train_head,
        "methods": [m.config.to_dict() for m in state.methods.values()],
        "method_keys": list(state.methods.keys()),
        "base_model": state.identity,
        "weights": {"file": weights_file, "sha256": digest, "bytes": len(weights)},
        "parameters": {k: v for k, v in parameter_report(model).items()},
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _save_lock(folder):
            atomic_write(folder / weights_file, weights)
            atomic_write(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
            _fsync_dir(folder)
            for old in folder.glob(f"{WEIGHTS_PREFIX}*.safetensors"):
                if old.name != weights_file:
                    old.unlink(missing_ok=True)
    except OSError as e:  # no permission, disk full, a read-only file system
        raise CheckpointError(
            f"cannot write the checkpoint to {folder} ({e.strerror or e}); a checkpoint already there is still "
            f"loadable. Choose a folder you can write to, with free space"
        ) from None
    return folder


def _brief(value: Any) -> str:
    """A short description of a config value for an error message (containers by kind, not in full)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} entries"
    return shown(value, 60)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _parse_config(folder: Path) -> Any:
    """The parsed JSON of ``folder``'s config; unreadable, undecodable or unparsable text is a CheckpointError."""
    file = folder / CONFIG_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise CheckpointError(
            f"{folder} is not a memtune checkpoint: {CONFIG_FILE} is missing (nor a peft adapter folder: no adapter_config.json)"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {file} ({e.strerror or e}); check the path and permissions") from None
    except ValueError:
        raise CheckpointError(f"{file} is corrupt (not UTF-8 text); save the model again") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{file} is corrupt (its JSON is nested too deeply); save the model again") from None
    except ValueError as e:  # JSONDecodeError, or an integer with more digits than Python converts
        raise CheckpointError(f"{file} is corrupt (not valid JSON: {e}); save the model again") from None


def _check_entries(config: dict[str, Any], file: Path) -> None:
    """Refuse entries of the wrong kind, so that nothing later trips over them with a raw TypeError."""

    def need(ok: Any, entry: str, expected: str) -> None:
        if not ok:
            value = config
            for part in entry.split("."):  # "weights.file": config["weights"]["file"]
                value = value.get(part)
            raise CheckpointError(
                f"{file}: '{entry}' must be {expected}, got {_brief(value)}; the config is damaged: save the model again"
            )

    for key in ("methods", "method_keys", "base_model", "weights"):
        if key not in config:
            raise CheckpointError(f"{file} lacks the '{key}' entry; it is damaged or not a memtune config")
    methods, keys, weights = config["methods"], config["method_keys"], config["weights"]
    need(isinstance(methods, list) and methods and all(isinstance(m, dict) for m in methods),
         "methods", "a non-empty array of method configs (objects)")  # fmt: skip
    need(isinstance(keys, list) and len(keys) == len(methods) and all(isinstance(k, str) for k in keys),
         "method_keys", f"an array of {len(methods)} names, one per method")  # fmt: skip
    need(isinstance(config["base_model"], dict), "base_model", "an object (the base model's identity)")
    need(isinstance(weights, dict), "weights", "an object (file, sha256, bytes)")
    name, digest, size = weights.get("file"), weights.get("sha256"), weights.get("bytes")
    need(isinstance(name, str) and _WEIGHTS_NAME.fullmatch(name),
         "weights.file", f"the name of a file in the checkpoint folder, {WEIGHTS_PREFIX}-<16 hex digits>.safetensors")
    need(isinstance(digest, str) and _SHA256.fullmatch(digest), "weights.sha256", "64 lowercase hex digits")
    need(size is None or _is_int(size, 0), "weights.bytes", "a byte count")
    need(config.get("recipe") is None or isinstance(config["recipe"], str), "recipe", "a recipe name or null")
    need(config.get("budget") is None or _is_int(config["budget"], 0), "budget", "a non-negative integer or null")
    need(config.get("train_head") is None or isinstance(config["train_head"], bool),
         "train_head", "true, false or null")  # fmt: skip


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a saved checkpoint, checked for presence, syntax, format version and entry kinds."""
    folder = Path(path)
    file = folder / CONFIG_FILE
    config = _parse_config(folder)
    version = config.get("format_version") if isinstance(config, dict) else None
    if not _is_int(version, 1):
        raise CheckpointError(
            f"{file} is not a memtune config (format_version must be an integer >= 1, got {_brief(version)})"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was written by memtune {str(config.get('memtune_version'))[:40]} in checkpoint "
            f"format {version}; this memtune {__version__} reads formats up to {FORMAT_VERSION}. "
            f"Upgrade memtune (pip install -U memtune)."
        )
    _check_entries(config, file)
    return config


def _read_weights(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as from_safetensors

    file = folder / config["weights"]["file"]  # a bare file name: read_config checked it
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {file} ({e.strerror or e}); check its permissions") from None
    if hashlib.sha256(data).hexdigest() != config["weights"]["sha256"]:
        raise CheckpointError(
            f"{file} does not match the checksum in {CONFIG_FILE} (size {len(data)} bytes, expected "
            f"{config['weights'].get('bytes')}): it is corrupt or truncated; save the model again"
        )
    try:
        return from_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None


def _read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and the tensors it names, read as one consistent pair, without a lock.

    A save replaces the config before it removes the weights the old config named; so when the weights
    cannot be read as the config describes and the config has changed meanwhile, read the new pair."""
    config = read_config(folder)
    for _ in range(_READ_ATTEMPTS):
        try:
            return config, _read_weights(folder, config)
        except CheckpointError:
            newer = read_config(folder)
            if newer["weights"] == config["weights"]:
                raise  # nobody replaced it: the checkpoint itself is damaged
            config = newer
    raise CheckpointError(
        f"{folder} was replaced {_READ_ATTEMPTS} times while being read (another process keeps saving into it); "
        f"load it once those saves are done"
    )


def _check_identity(saved: dict[str, Any], model: nn.Module, folder: Path, arch=None) -> None:
    missing = [k for k in _IDENTITY_KEYS if k not in saved]
    if missing:
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: base_model lacks {missing}, so the base model cannot be checked; the config "
            f"is damaged: save the model again, or load with check_base=False if you are sure of the base model"
        )
    current = identity_of(model, dims_of(model, arch_for(model, arch)))
    diffs = [
        f"{k}: checkpoint {_brief(saved[k])}, model {current.get(k)!r}"
        for k in _IDENTITY_KEYS
        if saved[k] is not None and current.get(k) is not None and saved[k] != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"{folder} was trained on a different base model ({_brief(saved.get('class'))}, "
            f"{_brief(saved.get('model_type'))}); " + "; ".join(diffs) + ". Load it onto the model it was trained from."
        )


def _check_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any], folder: Path,
                   allow_non_finite: bool) -> None:  # fmt: skip
    """Refuse, before anything is attached, tensors no method of the config owns, non-float and non-finite ones."""
    owners = ("backbone.", "head.", *(f"methods.{key}." for key in config["method_keys"]))
    strays = sorted(n for n in tensors if not n.startswith(owners))
    if strays:
        raise CheckpointError(
            f"{folder}: the weights hold tensors of no method in the config ({_listing(strays)}; methods: "
            f"{sorted(config['method_keys'])}); the checkpoint is damaged: save the model again"
        )
    not_float = [f"{n} ({t.dtype})" for n, t in tensors.items() if not t.is_floating_point()]
    if not_float:
        raise CheckpointError(
            f"{folder}: stored tensors must be floating point; {_listing(not_float)} are not. The checkpoint is "
            f"damaged or not written by memtune.save: save the model again"
        )
    bad = [] if allow_non_finite else _non_finite(tensors)
    if bad:
        raise CheckpointError(
            f"{folder}: {len(bad)} stored tensor(s) hold NaN or inf: {_listing(bad)}. The run that saved it "
            f"diverged; pass allow_non_finite=True to load it anyway"
        )


def _method_configs(config: dict[str, Any], folder: Path) -> list[MethodConfig]:
    try:
        return [MethodConfig.from_dict(c) for c in config["methods"]]
    except Exception as e:  # whatever a config class makes of a damaged value, it is the checkpoint's fault
        raise CheckpointError(f"{folder / CONFIG_FILE} holds an invalid method config: {e}") from None


def _attach_saved(model: nn.Module, config: dict[str, Any], configs: list[MethodConfig], folder: Path, arch) -> None:
    """Attach the saved methods as ``attach`` would (its size check runs before anything is allocated)."""
    recipe = Recipe(config["recipe"], config.get("budget") or 0, configs) if config.get("recipe") else configs
    try:
        attach(model, recipe, arch=arch, train_head=config.get("train_head"))
    except ArchitectureError:  # the model lacks what a method needs (or needs arch=): not the checkpoint's fault
        raise
    except Exception as e:  # attach leaves the model untouched when it refuses
        raise CheckpointError(f"{folder}: the saved methods cannot be attached to this model: {e}") from None
    keys = list(state_of(model).methods)
    if keys != config["method_keys"]:
        detach(model)
        raise CheckpointError(
            f"{folder}: the config names its methods {config['method_keys']} but they attach as {keys}; "
            f"the checkpoint is damaged: save the model again"
        )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def load(model: nn.Module, path: str | os.PathLike, *, arch=None, check_base: bool = True,
         allow_non_finite: bool = False) -> nn.Module:  # fmt: skip
    """Attach the methods saved in ``path`` to ``model`` and load their tensors; returns the model.

    The model must be the base model the checkpoint was trained from (checked by its dimensions and a
    fingerprint of its weights unless ``check_base=False``). Stored NaN or inf are refused unless
    ``allow_non_finite=True``. On any error the model is left untouched. Needs no write access to ``path``.
    A peft adapter folder (``adapter_config.json``, no ``memtune_config.json``) is read by ``load_peft``.
    """
    folder = Path(path)
    if not _exists(folder / CONFIG_FILE) and _exists(folder / "adapter_config.json"):
        from .peft_format import load_peft

        return load_peft(model, folder, arch=arch)
    if not is_transformers_model(model):
        raise MemtuneError(f"memtune.load needs a transformers PreTrainedModel, got {type(model).__name__}")
    if hasattr(model, STATE_ATTR):
        raise MemtuneError("this model already has memtune methods attached; load onto a fresh base model")
    config, tensors = _read_checkpoint(folder)
    configs = _method_configs(config, folder)
    if check_base:
        _check_identity(config["base_model"], model, folder, arch)
    _check_tensors(tensors, config, folder, allow_non_finite)
    _attach_saved(model, config, configs, folder, arch)
    try:
        _load_tensors(model, tensors, folder)
    except Exception:
        detach(model)
        raise
    return model


def _load_method_tensors(key: str, method: Any, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Load one method's stored tensors (``methods.<key>.*``): all it expects, nothing else, right shapes."""
    method.prepare_stored()
    own = {n[len(f"methods.{key}.") :]: t for n, t in tensors.items() if n.startswith(f"methods.{key}.")}
    expected = set(method.stored_state())
    missing, extra = sorted(expected - set(own)), sorted(set(own) - expected)
    problems = [f"{kind} {_listing([f'methods.{key}.{n}' for n in names])}"
                for kind, names in (("missing", missing), ("unexpected", extra)) if names]  # fmt: skip
    if problems:
        raise CheckpointError(
            f"{folder}: the '{key}' method's tensors do not match its config ({'; '.join(problems)}); "
            f"the checkpoint is damaged: save the model again"
        )
    try:
        method.load_stored(own)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder}: the '{key}' tensors do not fit this model: {e}") from None


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    state = state_of(model)
    params = dict(model.named_parameters())
    for key, method in state.methods.items():
        _load_method_tensors(key, method, tensors, folder)
    targets = {f"backbone.{n}": n for names in state.backbone_names.values() for n in names}
    targets.update({f"head.{n}": n for n in state.head_names})
    saved_other = {n for n in tensors if not n.startswith("methods.")}
    if saved_other != set(targets):
        missing, extra = sorted(set(targets) - saved_other), sorted(saved_other - set(targets))
        raise CheckpointError(
            f"{folder}: the saved head/backbone tensors do not match this model (missing {missing[:5]}, "
            f"unexpected {extra[:5]}); was it saved from a model with the same head class?"
        )
    with torch.no_grad():
        for file_name, name in targets.items():
            if params[name].shape != tensors[file_name].shape:
                raise CheckpointError(
                    f"{folder}: {name} has shape {tuple(tensors[file_name].shape)} in the checkpoint but "
                    f"{tuple(params[name].shape)} in the model (e.g. a different num_labels)"
                )
            params[name].copy_(tensors[file_name])
    for p in method_parameters(model):
        p.requires_grad_(True)
