"""attach / detach: put tuning methods into a Hugging Face model and take them out again.

After ``attach`` the model carries one submodule, ``model.memtune`` (a ``TuningState``), which holds
every method's parameters, the hooks, and the single record of what trains. That record is the one
predicate behind training (``requires_grad``), saving and the parameter report.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterable

import torch
import torch.nn as nn

from .arch import ArchSpec, Dims, arch_for, dims_of
from .errors import ConfigError, MemtuneError
from .methods.base import HookHandles, MethodConfig, Recipe, TunedMethod

STATE_ATTR = "memtune"


class TuningState(nn.Module):
    """Everything memtune added to a model: methods (as submodules) and how to undo the rest."""

    def __init__(self, arch: ArchSpec, dims: Dims, recipe: Recipe | None, train_head: bool, identity: dict):
        super().__init__()
        self.methods = nn.ModuleDict()
        self.arch, self.dims = arch, dims
        self.recipe_name = recipe.name if recipe else None
        self.recipe_budget = recipe.budget if recipe else None
        self.train_head, self.identity = train_head, identity
        self.handles = HookHandles()
        self.requires_grad_before: dict[str, bool] = {}  # by name, before any method was installed
        # (parameter, copy at attach) of backbone/head tensors that train; by object, not name, because
        # a method that wraps modules (LoRA) renames the parameters it wraps while installed
        self.originals: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.backbone_names: dict[str, list[str]] = {}  # method key -> backbone parameters it trains
        self.head_names: list[str] = []


def is_transformers_model(model: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def state_of(model: nn.Module) -> TuningState:
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, TuningState):
        raise MemtuneError("this model has no memtune methods attached; call memtune.attach(model, ...) first")
    return state


def _configs(configs: Any) -> tuple[list[MethodConfig], Recipe | None]:
    if isinstance(configs, Recipe):
        return list(configs.configs), configs
    if isinstance(configs, MethodConfig):
        return [configs], None
    if isinstance(configs, (list, tuple)) and configs and all(isinstance(c, MethodConfig) for c in configs):
        return list(configs), None
    raise MemtuneError(
        f"attach needs a MethodConfig (e.g. memtune.MemoryConfig()), a list of them or memtune.recipe(name); "
        f"got {type(configs).__name__}"
    )


def _check_conflicts(configs: list[MethodConfig], dims: Dims) -> None:
    """Two configs of one method may share no layer: they would claim the same site twice.

    (Backbone parameters trained by two different methods are caught later, by ``_claim_backbone``.)"""
    claimed: dict[tuple[str, int], int] = {}
    for n, config in enumerate(configs):
        for layer in config.layer_indices(dims):
            other = claimed.setdefault((config.method, layer), n)
            if other != n:
                raise MemtuneError(
                    f"configs {other} and {n} both put a {config.method!r} method on layer {layer}; "
                    f"give them disjoint `layers`, or merge them into one config"
                )


def method_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of memtune's methods, including those a method keeps inside the backbone (LoRA)."""
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, TuningState):
        return []
    return [p for method in state.methods.values() for _, p in method.own_parameters()]


def _method_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in method_parameters(model)}


def backbone_named_parameters(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """The pretrained model's own parameters: those of ``model.base_model``, named from ``model``."""
    base = {id(p) for p in model.base_model.parameters()} - _method_parameter_ids(model)
    for name, p in model.named_parameters():
        if id(p) in base and not name.startswith(STATE_ATTR + "."):
            yield name, p


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters outside the backbone and memtune: the task head (tied LM heads are backbone)."""
    base = {id(p) for p in model.base_model.parameters()} | _method_parameter_ids(model)
    return [n for n, p in model.named_parameters() if id(p) not in base and not n.startswith(STATE_ATTR + ".")]


def canonical_name(name: str) -> str:
    """A backbone parameter's name as in the bare model (a wrapping method inserts ``base_layer``)."""
    return name.replace(".base_layer.", ".")


def fingerprint(model: nn.Module) -> str | None:
    """A cheap identity of the backbone weights: names, shapes and a strided sample of each tensor.

    Values are rounded to bfloat16 first, so fp32 and bf16 copies of one model agree. None on meta tensors.
    """
    digest = hashlib.sha256()
    for name, p in sorted(backbone_named_parameters(model), key=lambda item: item[0]):
        if p.is_meta:
            return None
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64]
        digest.update(f"{canonical_name(name)}:{tuple(p.shape)};".encode())
        digest.update(sample.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def identity_of(model: nn.Module, dims: Dims) -> dict[str, Any]:
    return {
        "model_type": getattr(model.config, "model_type", None),
        "class": type(model).__name__,
        "hidden_size": dims.hidden,
        "num_layers": dims.layers,
        "num_heads": dims.heads,
        "num_kv_heads": dims.kv_heads,
        "vocab_size": dims.vocab,
        "fingerprint": fingerprint(model),
    }


def _available_bytes() -> int | None:
    """Memory this machine can still give (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_size(model: nn.Module, configs: list[MethodConfig], spec: ArchSpec, dims: Dims, dtype: torch.dtype,
                device: torch.device) -> None:  # fmt: skip
    """Refuse methods whose parameters cannot fit in memory, before allocating any (they are first built on the
    meta device, which takes no memory and draws no random numbers). A model on the meta device takes any size."""
    if device.type != "cpu":
        return
    with torch.device("meta"):
        count = sum(p.numel() for c in configs for p in c.build(model, spec, dims).parameters())
    need, available = count * torch.finfo(dtype).bits // 8, _available_bytes()
    if available is not None and need > available:
        names = ", ".join(f"{type(c).__name__}" for c in configs)
        raise ConfigError(
            f"the methods ({names}) would add {count:,} parameters ({need / 2**30:.1f} GiB in {dtype}), more than the "
            f"{available / 2**30:.1f} GiB this machine has free; lower the budget (slots, bottleneck, prefix length), "
            f"or count on the meta device (memtune params does)"
        )


def _placement(device: torch.device) -> Any:
    """Where methods create their tensors: on the meta device for a meta model (nothing allocated), else as usual."""
    return torch.device("meta") if device.type == "meta" else contextlib.nullcontext()


def _backbone_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for _, p in backbone_named_parameters(model):
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def attach(
    model: nn.Module,
    configs: Any,
    *,
    arch: ArchSpec | None = None,
    train_head: bool | None = None,
) -> nn.Module:
    """Attach tuning methods to a Hugging Face model, in place; returns the model.

    Args:
        model: a ``transformers`` model (any head: sequence/token classification, causal LM, ...).
        configs: a MethodConfig, a list of them, or ``memtune.recipe(name, budget)``.
        arch: where to hook, for architectures memtune does not know (``memtune.ArchSpec``).
        train_head: also train the parameters outside the backbone (the task head). They are reported
            apart from the method's own counts, as in the paper's tables. None (default): train a task
            head (classifier, scorer) but not a pretrained language-model head.

    The backbone is frozen; only the methods' parameters (and the head) require gradients.
    """
    if not is_transformers_model(model):
        raise MemtuneError(
            f"memtune.attach needs a transformers PreTrainedModel (e.g. AutoModelForSequenceClassification."
            f"from_pretrained(...)), got {type(model).__name__}"
        )
    if hasattr(model, STATE_ATTR):
        raise MemtuneError(
            "this model already has memtune methods attached; call memtune.detach(model) first, "
            "or attach all configs at once as a list"
        )
    config_list, recipe = _configs(configs)
    spec = arch_for(model, arch)
    dims = dims_of(model, spec)
    _check_conflicts(config_list, dims)
    for config in config_list:
        config.check_model(dims)

    dtype, device = _backbone_dtype_device(model)
    _check_size(model, config_list, spec, dims, dtype, device)
    state = TuningState(spec, dims, recipe, train_head, identity_of(model, dims))
    with _placement(device):
        for config in config_list:
            key = config.method if config.method not in state.methods else f"{config.method}_{len(state.methods)}"
            state.methods[key] = config.build(model, spec, dims)
    state.to(device=device, dtype=dtype)
    state.train(model.training)  # follow the model's train/eval mode (dropout)
    state.requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
    model.add_module(STATE_ATTR, state)
    try:
        with _placement(device):
            for method in state.methods.values():
                method.install(model, spec, state.handles)
        _set_trainable(model, state)
    except Exception:
        _undo(model, state, restore=False)
        raise
    return model


def _claim_backbone(model: nn.Module, state: TuningState) -> None:
    """Which backbone parameters each method trains; two different methods may not claim one parameter."""
    owner: dict[str, str] = {}
    backbone = list(backbone_named_parameters(model))
    for key, method in state.methods.items():
        names = method.backbone_trainable(model, backbone)
        for name in names:
            other = owner.setdefault(name, key)
            if other != key and state.methods[other].config.method != method.config.method:
                raise MemtuneError(
                    f"methods {other!r} and {key!r} both train the backbone parameter {name!r}; "
                    f"drop one of them (e.g. full fine-tuning already trains every bias BitFit would)"
                )
        state.backbone_names[key] = names


def _set_trainable(model: nn.Module, state: TuningState) -> None:
    _claim_backbone(model, state)
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    state.head_names = _head_to_train(model, state.train_head)
    trained = dict.fromkeys([n for names in state.backbone_names.values() for n in names] + state.head_names)
    for name in trained:
        state.originals.append((params[name], params[name].detach().clone()))
        params[name].requires_grad_(True)
    for p in method_parameters(model):
        p.requires_grad_(True)


def _undo(model: nn.Module, state: TuningState, restore: bool) -> None:
    """Remove the hooks and wrappers, then put back trained tensors (if ``restore``) and ``requires_grad``."""
    state.handles.remove()
    params = dict(model.named_parameters())
    with torch.no_grad():
        if restore:
            for param, original in state.originals:
                param.copy_(original)
        for name, flag in state.requires_grad_before.items():
            if name in params:
                params[name].requires_grad_(flag)
    delattr(model, STATE_ATTR)


def _head_to_train(model: nn.Module, train_head: bool | None) -> list[str]:
    if train_head is False:
        return []
    names = head_parameter_names(model)
    if train_head is None:
        lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        pretrained = {id(p) for p in lm_head.parameters()} if isinstance(lm_head, nn.Module) else set()
        params = dict(model.named_parameters())
        names = [n for n in names if id(params[n]) not in pretrained]
    return names


def detach(model: nn.Module, *, restore: bool = True) -> nn.Module:
    """Remove every memtune method from ``model``, in place; returns the model.

    With ``restore`` (default) the backbone and head tensors that trained are put back as they were
    at ``attach``, so the original model comes back bit for bit. ``restore=False`` keeps them trained.
    """
    _undo(model, state_of(model), restore)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the trained methods into the backbone weights and remove memtune: a plain model for inference.

    Only methods that change weights can be merged: LoRA (W <- W + s W_down W_up), BitFit and full
    fine-tuning. Prefixes, memories and adapters add computation and must stay attached (or be saved).
    """
    state = state_of(model)
    fixed = [f"{key} ({method.config.method})" for key, method in state.methods.items() if not method.mergeable]
    if fixed:
        raise MemtuneError(
            f"cannot merge {', '.join(fixed)} into the weights: only LoRA (ungated), BitFit and full fine-tuning "
            f"can be merged; keep the model attached, or memtune.save it"
        )
    for method in state.methods.values():
        method.merge()
    _undo(model, state, restore=False)
    return model


def methods_of(model: nn.Module) -> dict[str, TunedMethod]:
    return dict(state_of(model).methods.items())
