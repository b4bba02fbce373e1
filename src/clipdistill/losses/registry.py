"""Losses found by name: each loss file registers its class; ``module:Class`` reaches any other.

    @register("fd")
    class FDLoss(nn.Module):
        needs_teacher = True
        ...

A config's ``losses:`` section names a registered loss (``fd``) or a class importable from anywhere
(``my_pkg.my_losses:MyLoss``); both are built by :func:`get` with their keyword arguments checked
against the class's signature, so a typo is one clear line either way.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Iterable

from torch import nn

from clipdistill.errors import UserError

_REGISTRY: dict[str, type[nn.Module]] = {}

# Passed to every loss by the objective; dropped for a loss whose signature does not take them.
_OPTIONAL_DIMS = ("student_dim", "teacher_dim")


def register(name: str):
    """Class decorator: make the loss available as ``name`` (in configs, :func:`get` and :func:`names`)."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        taken = _REGISTRY.get(name)
        # The same class defined again (a module reloaded) replaces itself; another class may not take the name.
        if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"loss name '{name}' is registered twice ({taken.__name__}, {cls.__name__})")
        if not isinstance(getattr(cls, "needs_teacher", None), bool):
            raise TypeError(f"loss '{name}' ({cls.__name__}) must declare needs_teacher = True or False")
        _REGISTRY[name] = cls
        return cls

    return add


def names() -> list[str]:
    """Every registered loss name, sorted."""
    return sorted(_REGISTRY)


def resolve(key: str) -> type[nn.Module]:
    """The loss class for a registered name or a ``module:Class`` key."""
    if ":" in key:
        return _import_class(key)
    if key not in _REGISTRY:
        raise UserError(f"unknown loss '{key}' (available: {', '.join(names())}; "
                        "or module:Class for a loss defined elsewhere)")
    return _REGISTRY[key]


def _import_class(key: str) -> type[nn.Module]:
    module_name, _, class_name = key.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"loss '{key}': cannot import module '{module_name}' ({err}); is it on PYTHONPATH?") from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UserError(f"loss '{key}': module '{module_name}' has no nn.Module class '{class_name}'")
    return cls


def get(key: str, **kwargs) -> nn.Module:
    """Build the loss ``key`` (a registered name or ``module:Class``) with keyword hyperparameters.

    ``student_dim``/``teacher_dim`` are accepted by every loss (dropped where the class does not take
    them), so a caller can pass them uniformly. Any other unknown keyword is one UserError line.
    """
    cls = resolve(key)
    parameters = inspect.signature(cls.__init__).parameters
    # nn.Module's own __init__ (a loss without one) takes **kwargs only to reject them.
    takes_any = cls.__init__ is not nn.Module.__init__ and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [p for p in parameters if p != "self" and parameters[p].kind not in
                (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if not takes_any:
        for dim in _OPTIONAL_DIMS:
            if dim not in accepted:
                kwargs.pop(dim, None)
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise UserError(f"loss '{key}' has no parameter '{unknown[0]}' "
                            f"(parameters: {', '.join(accepted) or 'none'})")
    return cls(**kwargs)


def needs_teacher(names_or_specs: Iterable[str]) -> bool:
    """Whether any of these losses (names, ``module:Class`` keys, or a ``losses:`` mapping) needs a teacher.

    A class without a ``needs_teacher`` attribute (a loss written elsewhere) is assumed to need one.
    """
    return any(getattr(resolve(key), "needs_teacher", True) for key in names_or_specs)
