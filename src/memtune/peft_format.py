"""peft's own adapter format: export memtune's LoRA or prefix to it, and load a peft folder into memtune.

    out/
      adapter_config.json          peft's LoraConfig or PrefixTuningConfig (inference_mode, task_type from the head)
      adapter_model.safetensors    LoRA: "base_model.model.<module>.lora_A|lora_B.weight"
                                   prefix: "prompt_embeddings" (l, L * 2 d_kv), the stored prefix
                                   head (peft's modules_to_save): "base_model[.model].<head parameter>"

Only what peft can represent is exported: ungated LoRA on the query/key/value projections (several
LoRA configs become one peft adapter with ``rank_pattern``/``alpha_pattern``), or one ungated prefix on
every layer with ``shift_positions=True`` (peft gives the real tokens positions l, l+1, ...). Anything
else is refused before a file is written. Each file is written atomically (weights, then config); peft
reads fixed file names, so unlike ``memtune.save`` a crash between the two can pair new weights with
the old config.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .arch import ArchSpec, arch_for, blocks, dims_of, submodule
from .errors import ArchitectureError, CheckpointError, ConfigError, MemtuneError
from .io import CONFIG_FILE, atomic_write
from .methods.lora import ROLES, LoraConfig, _proj_path
from .methods.prefix import PrefixConfig
from .tuning import STATE_ATTR, attach, detach, head_parameter_names, is_transformers_model, methods_of, state_of

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"

_NOT_IN_PEFT = {
    "memory": "MT-F memory blocks: peft has no memory-tuning method",
    "adapter": "bottleneck adapters: peft has no bottleneck (Houlsby/Pfeiffer) adapters",
    "bitfit": "BitFit trains the backbone's own biases: peft has no BitFit method",
    "full": "full fine-tuning changes the backbone itself: save the whole model with save_pretrained instead",
}


def _task_type(model: nn.Module) -> str | None:
    """peft's task_type for the model's head class; None for heads peft has no task class for."""
    from transformers.models.auto import modeling_auto as auto

    def names(mapping: dict) -> set[str]:
        return {n for v in mapping.values() for n in ((v,) if isinstance(v, str) else v)}

    cls = type(model).__name__
    for task, mapping, suffix in (
        ("SEQ_CLS", auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "ForSequenceClassification"),
        ("TOKEN_CLS", auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, "ForTokenClassification"),
        ("CAUSAL_LM", auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "ForCausalLM"),
        ("QUESTION_ANS", auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES, "ForQuestionAnswering"),
    ):
        if cls in names(mapping) or cls.endswith(suffix):
            return task
    return "FEATURE_EXTRACTION" if getattr(model, "base_model", None) is model else None


def _plain_module_names(model: nn.Module) -> list[str]:
    """Module names as in the bare model: nothing inside a peft wrapper, nothing of memtune's."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrappers = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    return [
        n for n, _ in model.named_modules()
        if n and n != STATE_ATTR and not n.startswith(STATE_ATTR + ".") and not any(n.startswith(w + ".") for w in wrappers)
    ]


def _head_modules(names: list[str]) -> list[str]:
    """The top-level modules holding the given head parameters (peft's ``modules_to_save`` entries)."""
    return list(dict.fromkeys(n.split(".")[0] for n in names))


# --- export ------------------------------------------------------------------------------------------


def _refusals(methods: dict) -> tuple[list[str], bool]:
    """Why peft cannot represent these methods, one line per method or combination (empty if it can);
    and whether only config values are to blame (then a ConfigError)."""
    reasons, only_options = [], True
    for key, method in methods.items():
        config, why = method.config, []
        if config.method not in ("lora", "prefix"):
            only_options = False
            why.append(_NOT_IN_PEFT.get(config.method, f"peft has no equivalent of memtune's {config.method!r} method"))
        elif config.gate:
            why.append("gated (UniPELT): peft has no learned gates")
        if config.method == "prefix" and not config.shift_positions:
            why.append(
                "shift_positions=False: peft passes the prefix as past_key_values, so the real tokens take positions "
                "l, l+1, ...; memtune's default keeps 0, 1, ..., which peft cannot represent. Train with "
                "PrefixConfig(shift_positions=True) to export"
            )
        if config.method == "prefix" and config.layers is not None:
            why.append(f"on layers {config.layers} only: peft's prefix covers every layer")
        if why:
            reasons.append(f"{key} ({config.method}): " + "; ".join(why))
    kinds = [m.config.method for m in methods.values()]
    if {"lora", "prefix"} <= set(kinds):
        only_options = False
        reasons.append(
            "lora + prefix: a peft adapter folder holds one method, and peft cannot combine LoRA and prefix tuning in one"
        )
    if kinds.count("prefix") > 1:
        only_options = False
        reasons.append("several prefix configs: peft has one prefix for all layers")
    dropouts = sorted({m.config.dropout for m in methods.values() if m.config.method == "lora"})
    if len(dropouts) > 1:
        reasons.append(f"LoRA configs with different dropouts {dropouts}: one peft adapter has one lora_dropout")
    return reasons, only_options


def _lora_config(model: nn.Module, loras: list, task: str | None, heads: list[str]) -> tuple[Any, dict[str, torch.Tensor]]:
    """peft's LoraConfig for memtune's LoRA method(s) and their tensors under peft's names."""
    from peft import LoraConfig as PeftLoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    arch = state_of(model).arch
    ranks: dict[str, tuple[int, float]] = {}  # module -> (r, lora_alpha)
    tensors: dict[str, torch.Tensor] = {}
    for method in loras:
        for key, name in method.targets(model, arch).items():
            ranks[name] = (method.config.rank, method.config.scaling * method.config.rank)
            pair = method.pairs[key]
            tensors[f"base_model.model.{name}.lora_A.weight"] = pair["A"].weight
            tensors[f"base_model.model.{name}.lora_B.weight"] = pair["B"].weight
    first = loras[0].config
    common = dict(
        task_type=task,
        r=first.rank,
        lora_alpha=first.scaling * first.rank,
        lora_dropout=first.dropout,
        fan_in_fan_out=type(_base(model.get_submodule(next(iter(ranks))))).__name__ == "Conv1D",
        bias="none",
        modules_to_save=heads or None,
        inference_mode=True,
        base_model_name_or_path=getattr(model, "name_or_path", None) or None,
    )
    plain = _plain_module_names(model)
    if len(loras) == 1:  # peft's usual form: short names (+ layers_to_transform), if it picks exactly these modules
        leaves = sorted({name.rsplit(".", 1)[-1] for name in ranks})
        short = PeftLoraConfig(target_modules=leaves, layers_to_transform=first.layers, **common)
        if {n for n in plain if check_target_module_exists(short, n)} == set(ranks):
            return short, tensors
    explicit = PeftLoraConfig(
        target_modules=sorted(ranks),
        rank_pattern={n: r for n, (r, _) in ranks.items() if r != common["r"]},
        alpha_pattern={n: a for n, (_, a) in ranks.items() if a != common["lora_alpha"]},
        **common,
    )
    return explicit, tensors


def _prefix_config(model: nn.Module, method, task: str | None, heads: list[str]) -> tuple[Any, dict[str, torch.Tensor]]:
    from peft import PrefixTuningConfig

    dims = state_of(model).dims
    prefix = method.full_prefix().detach()  # (L, l, 2 d_kv)
    config = PrefixTuningConfig(
        task_type=task,
        num_virtual_tokens=method.length,
        token_dim=dims.kv_dim,
        num_layers=dims.layers,
        num_attention_heads=dims.kv_heads,
        num_transformer_submodules=1,
        encoder_hidden_size=dims.hidden,
        prefix_projection=False,
        modules_to_save=heads or None,
        inference_mode=True,
        base_model_name_or_path=getattr(model, "name_or_path", None) or None,
    )
    return config, {"prompt_embeddings": prefix.permute(1, 0, 2).reshape(method.length, -1)}  # (l, L * 2 d_kv)


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def export_peft(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the memtune methods of ``model`` in peft's format, for ``PeftModel.from_pretrained``; returns the folder.

    LoRA and prefix tuning (``shift_positions=True``) only; anything peft cannot represent is refused
    before a file is written. A classification head (and any head memtune trains) goes into peft's
    ``modules_to_save``.
    """
    from safetensors.torch import save as to_safetensors

    from .version import __version__

    state = state_of(model)
    methods = methods_of(model)
    reasons, only_options = _refusals(methods)
    if reasons:
        error = ConfigError if only_options else MemtuneError
        raise error("cannot export to peft's format:\n- " + "\n- ".join(reasons))
    task = _task_type(model)
    prefixes = [m for m in methods.values() if m.config.method == "prefix"]
    if prefixes and task is None:
        raise MemtuneError(
            f"cannot export a prefix on a {type(model).__name__} to peft's format: peft applies a prefix only "
            f"through its task classes (sequence/token classification, causal LM, question answering, feature extraction)"
        )
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder; choose another path")
    if (folder / CONFIG_FILE).exists():
        raise CheckpointError(
            f"{folder} holds a memtune checkpoint ({CONFIG_FILE}), which memtune.load would read instead of the peft "
            f"files; export to another folder"
        )
    head_names = list(state.head_names)
    if task in ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"):  # peft saves the task head whether or not it trained
        head_names = list(dict.fromkeys(head_names + head_parameter_names(model)))
    heads = _head_modules(head_names)
    if prefixes:
        config, tensors = _prefix_config(model, prefixes[0], task, heads)
        head_prefix = "base_model."
    else:
        config, tensors = _lora_config(model, list(methods.values()), task, heads)
        head_prefix = "base_model.model."
    params = dict(model.named_parameters())
    tensors.update({head_prefix + n: params[n] for n in head_names})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    weights = to_safetensors(tensors, metadata={"format": "pt", "memtune_version": __version__})
    data = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}
    atomic_write(folder / PEFT_WEIGHTS_FILE, weights)
    atomic_write(folder / PEFT_CONFIG_FILE, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
    return folder


# --- load --------------------------------------------------------------------------------------------


def _read_peft(folder: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    from peft import PeftConfig
    from safetensors.torch import load as from_safetensors

    config_file, weights_file = folder / PEFT_CONFIG_FILE, folder / PEFT_WEIGHTS_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{folder} is not a peft adapter folder: {PEFT_CONFIG_FILE} is missing")
    if not weights_file.is_file():
        other = sorted(p.name for p in folder.glob("adapter_model*"))
        raise CheckpointError(
            f"{weights_file} is missing; memtune reads peft adapters saved as safetensors"
            + (f" (found {other}; save with safe_serialization=True)" if other else "")
        )
    try:
        data = json.loads(config_file.read_text())
        config = PeftConfig.from_peft_type(**data)
    except Exception as e:  # noqa: BLE001 - bad JSON, unknown peft_type, peft's own validation
        raise CheckpointError(f"{config_file} is not a readable peft config ({type(e).__name__}: {e})") from None
    try:
        tensors = from_safetensors(weights_file.read_bytes())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{weights_file} is not a readable safetensors file ({e})") from None
    return config, tensors


def _projections(model: nn.Module, arch: ArchSpec) -> dict[str, tuple[int, list[str]]]:
    """Every query/key/value projection memtune's LoRA can wrap: module name -> (layer, roles)."""
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, tuple[int, list[str]]] = {}
    for i, block in enumerate(blocks(model, arch)):
        for role in ROLES:
            try:
                module = submodule(block, _proj_path(arch, role), f"the {role} projection")
            except ArchitectureError:
                continue
            found.setdefault(names[id(module)], (i, []))[1].append(role)
    return found


def _lora_configs(model: nn.Module, arch: ArchSpec, config, n_layers: int) -> list[LoraConfig]:
    """memtune LoraConfigs equivalent to a peft LoraConfig on this model (one per rank/scaling/roles group)."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    unsupported = {
        "use_dora": "DoRA", "lora_bias": "LoRA biases", "layer_replication": "layer replication",
        "target_parameters": "target_parameters", "trainable_token_indices": "trainable tokens",
        "alora_invocation_tokens": "aLoRA", "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA",
    }
    used = [what for attr, what in unsupported.items() if getattr(config, attr, None)]
    if getattr(config, "bias", "none") != "none":
        used.append(f"bias={config.bias!r} (trained biases)")
    if used:
        raise CheckpointError(f"this peft LoRA uses {', '.join(used)}, which memtune's LoRA does not have")
    if config.target_modules == "all-linear":
        raise CheckpointError(
            "this peft LoRA targets every linear layer ('all-linear'); memtune's LoRA adapts only query/key/value projections"
        )
    targets = [n for n in _plain_module_names(model) if check_target_module_exists(config, n)]
    if not targets:
        raise CheckpointError(f"the peft LoRA's target_modules {config.target_modules!r} match no module of this model")
    projections = _projections(model, arch)
    other = [n for n in targets if n not in projections]
    if other:
        raise CheckpointError(
            f"the peft LoRA adapts {other[:4]}{' ...' if len(other) > 4 else ''}, which are not query/key/value "
            f"projections; memtune's LoRA adapts only those"
        )
    groups: dict[tuple[int, float], dict[int, list[str]]] = {}
    for name in targets:
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), name), config.lora_alpha)
        scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        layer, roles = projections[name]
        groups.setdefault((r, scaling), {}).setdefault(layer, []).extend(roles)
    configs, owner = [], {}
    for (r, scaling), layers in groups.items():
        by_roles: dict[tuple[str, ...], list[int]] = {}
        for layer, roles in layers.items():
            by_roles.setdefault(tuple(role for role in ROLES if role in roles), []).append(layer)
        for roles, indices in by_roles.items():
            for i in indices:
                if owner.setdefault(i, (r, scaling, roles)) != (r, scaling, roles):
                    raise CheckpointError(
                        f"the peft LoRA gives layer {i}'s projections different ranks, scalings or groupings; "
                        f"memtune's LoRA has one rank and scaling per layer"
                    )
            configs.append(LoraConfig(
                rank=r, scaling=scaling, dropout=config.lora_dropout, targets=list(roles),
                layers=None if len(indices) == n_layers else sorted(indices),
            ))
    return configs


def _head_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, folder: Path) -> dict[str, torch.Tensor]:
    """The task-head tensors peft saved (modules_to_save), by the model's parameter names, shape-checked."""
    heads = set(head_parameter_names(model))
    params = dict(model.named_parameters())
    found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    stray = sorted(k for k in tensors if not k.startswith(prefix))
    if stray:
        raise CheckpointError(f"{folder}: {PEFT_WEIGHTS_FILE} holds tensors memtune cannot place: {stray[:4]}")
    not_head = sorted(n for n in found if n not in heads)
    if not_head:
        raise CheckpointError(
            f"{folder}: peft's modules_to_save holds {not_head[:4]}, which "
            + ("are backbone parameters; memtune loads only task-head modules" if all(n in params for n in not_head)
               else "this model does not have; was it saved from a model with the same head class?")
        )
    for name, tensor in found.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{folder}: {name} has shape {tuple(tensor.shape)} in the peft folder but {tuple(params[name].shape)} "
                f"in the model (e.g. a different num_labels)"
            )
    return found


def load_peft(model: nn.Module, directory: str | os.PathLike, *, arch: ArchSpec | None = None) -> nn.Module:
    """Attach the equivalent of a peft LoRA or prefix-tuning folder to ``model`` and load its weights; returns it.

    LoRA becomes memtune ``LoraConfig``(s) with the same ranks, targets and scaling; a prefix becomes
    ``PrefixConfig(shift_positions=True, reparameterize=False)``, filled with the prefix peft stored
    (peft stores the projected prefix when ``prefix_projection=True``). A saved task head is loaded too.
    Other peft types are refused; on any error the model is left untouched.
    """
    folder = Path(directory)
    if not is_transformers_model(model):
        raise MemtuneError(f"memtune.load_peft needs a transformers PreTrainedModel, got {type(model).__name__}")
    if hasattr(model, STATE_ATTR):
        raise MemtuneError("this model already has memtune methods attached; load onto a fresh base model")
    config, tensors = _read_peft(folder)
    spec = arch_for(model, arch)
    dims = dims_of(model, spec)
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    if peft_type == "LORA":
        configs = _lora_configs(model, spec, config, dims.layers)
        adapter = {k: v for k, v in tensors.items() if ".lora_" in k}
        head = _head_tensors(model, {k: v for k, v in tensors.items() if k not in adapter}, "base_model.model.", folder)
    elif peft_type == "PREFIX_TUNING":
        if config.num_transformer_submodules not in (None, 1):
            raise CheckpointError(
                f"{folder}: this peft prefix has {config.num_transformer_submodules} transformer submodules "
                f"(encoder-decoder); memtune's prefix is for one stack of self-attention layers"
            )
        saved = {k: getattr(config, k, None) for k in ("num_layers", "token_dim", "num_attention_heads")}
        here = {"num_layers": dims.layers, "token_dim": dims.kv_dim, "num_attention_heads": dims.kv_heads}
        diffs = [f"{k} {saved[k]} (model: {here[k]})" for k in saved if saved[k] is not None and saved[k] != here[k]]
        if diffs:
            raise CheckpointError(
                f"{folder}: this peft prefix was made for another model: " + ", ".join(diffs) + " (token_dim and "
                f"num_attention_heads count the key/value width and heads); load it onto the model it was trained from"
            )
        l, width = config.num_virtual_tokens, dims.layers * 2 * dims.kv_dim
        embeddings = tensors.get("prompt_embeddings")
        if embeddings is None or tuple(embeddings.shape) != (l, width):
            got = None if embeddings is None else tuple(embeddings.shape)
            raise CheckpointError(
                f"{folder}: expected a stored prefix 'prompt_embeddings' of shape ({l}, {width}) = (l, L * 2 * d_kv) for "
                f"this model ({dims.layers} layers, d_kv = {dims.kv_dim}); found {got} (keys: {sorted(tensors)[:5]})"
            )
        configs = [PrefixConfig(prefix_length=l, reparameterize=False, shift_positions=True)]
        adapter = {"prefix": embeddings.reshape(l, dims.layers, 2 * dims.kv_dim).permute(1, 0, 2)}  # (L, l, 2 d_kv)
        head = _head_tensors(model, {k: v for k, v in tensors.items() if k != "prompt_embeddings"}, "base_model.", folder)
    else:
        raise CheckpointError(
            f"{folder} holds a peft {peft_type} adapter; memtune loads peft's LORA and PREFIX_TUNING adapters only"
        )
    attach(model, configs, arch=spec, train_head=True if head else None)
    try:
        _load_adapter(model, spec, adapter, folder)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in head.items():
                params[name].copy_(tensor)
    except Exception:
        detach(model)
        raise
    return model


def _load_adapter(model: nn.Module, arch: ArchSpec, adapter: dict[str, torch.Tensor], folder: Path) -> None:
    """Fill the attached methods from the peft tensors (LoRA: by module name; prefix: the stored prefix)."""
    used: set[str] = set()
    for key, method in methods_of(model).items():
        if method.config.method == "prefix":
            own, used = {"prefix": adapter["prefix"]}, used | {"prefix"}
        else:
            own = {}
            for pair, name in method.targets(model, arch).items():
                for part, peft_part in (("A", "lora_A"), ("B", "lora_B")):
                    file_key = f"base_model.model.{name}.{peft_part}.weight"
                    if file_key not in adapter:
                        raise CheckpointError(f"{folder}: {file_key} is missing from {PEFT_WEIGHTS_FILE}")
                    own[f"lora.{pair}.{part}.weight"] = adapter[file_key]
                    used.add(file_key)
        try:
            method.load_stored(own)
        except RuntimeError as e:
            raise CheckpointError(f"{folder}: the peft tensors do not fit this model's '{key}' method: {e}") from None
    extra = sorted(set(adapter) - used)
    if extra:
        raise CheckpointError(f"{folder}: {PEFT_WEIGHTS_FILE} holds tensors memtune cannot place: {extra[:4]}")
