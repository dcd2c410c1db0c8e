"""save / load: a folder with the stored tensors (safetensors, never pickle) and a JSON config.

    out/
      memtune_config.json        method configs, library version, base-model identity, weights checksum
      memtune_weights-<sha256 prefix>.safetensors   "methods.<key>.<name>", "backbone.<name>", "head.<name>"

Each file is written to a temporary name and renamed into place: first the weights, under a name that
holds their checksum, then the config that names them; weights files no config names are removed last.
A crash at any point leaves the old checkpoint or the new one loadable, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .arch import arch_for, dims_of
from .errors import CheckpointError, MemtuneError
from .methods.base import MethodConfig, Recipe
from .params import parameter_report
from .tuning import STATE_ATTR, attach, detach, identity_of, is_transformers_model, method_parameters, state_of
from .version import FORMAT_VERSION, __version__

CONFIG_FILE = "memtune_config.json"
WEIGHTS_PREFIX = "memtune_weights"
_IDENTITY_KEYS = ("model_type", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size", "fingerprint")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is as readable as any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything a trained model needs beyond its backbone, under save-file names."""
    state = state_of(model)
    params = dict(model.named_parameters())
    tensors = {}
    for key, method in state.methods.items():
        tensors.update({f"methods.{key}.{n}": t for n, t in method.stored_state().items()})
        tensors.update({f"backbone.{n}": params[n] for n in state.backbone_names[key]})
    tensors.update({f"head.{n}": params[n] for n in state.head_names})
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the tuned parameters of ``model`` (not its backbone) to the folder ``path``; returns it."""
    from safetensors.torch import save as to_safetensors

    state = state_of(model)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder; choose another path")
    weights = to_safetensors(stored_tensors(model), metadata={"format": "pt", "memtune_version": __version__})
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
    atomic_write(folder / weights_file, weights)
    atomic_write(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    for old in folder.glob(f"{WEIGHTS_PREFIX}*.safetensors"):
        if old.name != weights_file:
            old.unlink()
    return folder


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a saved checkpoint, checked for presence, syntax and format version."""
    folder = Path(path)
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{folder} is not a memtune checkpoint: {CONFIG_FILE} is missing (nor a peft adapter folder: no adapter_config.json)"
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is corrupt (not valid JSON: {e}); save the model again") from None
    if not isinstance(config, dict) or not isinstance(config.get("format_version"), int):
        raise CheckpointError(f"{file} is not a memtune config (no integer format_version)")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was written by memtune {config.get('memtune_version')} in checkpoint format "
            f"{config['format_version']}; this memtune {__version__} reads formats up to {FORMAT_VERSION}. "
            f"Upgrade memtune (pip install -U memtune)."
        )
    for key in ("methods", "base_model", "weights"):
        if key not in config:
            raise CheckpointError(f"{file} lacks the '{key}' entry; it is damaged or not a memtune config")
    return config


def _read_weights(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as from_safetensors

    file = folder / Path(str(config["weights"].get("file", ""))).name
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != config["weights"].get("sha256"):
        raise CheckpointError(
            f"{file} does not match the checksum in {CONFIG_FILE} (size {len(data)} bytes, expected "
            f"{config['weights'].get('bytes')}): it is corrupt or truncated; save the model again"
        )
    try:
        return from_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None


def _check_identity(saved: dict[str, Any], model: nn.Module, folder: Path, arch=None) -> None:
    current = identity_of(model, dims_of(model, arch_for(model, arch)))
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, model {current.get(k)!r}"
        for k in _IDENTITY_KEYS
        if saved.get(k) is not None and current.get(k) is not None and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"{folder} was trained on a different base model ({saved.get('class')}, "
            f"{saved.get('model_type')}); " + "; ".join(diffs) + ". Load it onto the model it was trained from."
        )


def load(model: nn.Module, path: str | os.PathLike, *, arch=None, check_base: bool = True) -> nn.Module:
    """Attach the methods saved in ``path`` to ``model`` and load their tensors; returns the model.

    The model must be the base model the checkpoint was trained from (checked by its dimensions and a
    fingerprint of its weights unless ``check_base=False``). On any error the model is left untouched.
    A peft adapter folder (``adapter_config.json``, no ``memtune_config.json``) is read by ``load_peft``.
    """
    folder = Path(path)
    if not (folder / CONFIG_FILE).exists() and (folder / "adapter_config.json").is_file():
        from .peft_format import load_peft

        return load_peft(model, folder, arch=arch)
    if not is_transformers_model(model):
        raise MemtuneError(f"memtune.load needs a transformers PreTrainedModel, got {type(model).__name__}")
    if hasattr(model, STATE_ATTR):
        raise MemtuneError("this model already has memtune methods attached; load onto a fresh base model")
    config = read_config(folder)
    try:
        configs = [MethodConfig.from_dict(c) for c in config["methods"]]
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE} holds an invalid method config: {e}") from None
    if check_base:
        _check_identity(config["base_model"], model, folder, arch)
    tensors = _read_weights(folder, config)
    recipe = Recipe(config["recipe"], config.get("budget") or 0, configs) if config.get("recipe") else configs
    attach(model, recipe, arch=arch, train_head=config.get("train_head"))
    try:
        _load_tensors(model, tensors, folder)
    except Exception:
        detach(model)
        raise
    return model


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    state = state_of(model)
    params = dict(model.named_parameters())
    expected = set()
    for key, method in state.methods.items():
        method.prepare_stored()
        own = {n[len(f"methods.{key}.") :]: t for n, t in tensors.items() if n.startswith(f"methods.{key}.")}
        expected.update(f"methods.{key}.{n}" for n in own)
        try:
            method.load_stored(own)
        except RuntimeError as e:
            raise CheckpointError(f"{folder}: the '{key}' tensors do not fit this model: {e}") from None
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
