"""Layer training controls shared by :class:`ConvLSTMCell` and :class:`ConvLSTM`.

- ``name``: shown in ``repr``; :meth:`LayerControls.tag` builds TensorBoard tags from it.
- weight regularizers (:class:`L1`, :class:`L2`, :class:`L1L2`, names, dicts or callables),
  summed over a whole model by :func:`regularization_loss`.
- ``trainable`` / :meth:`~LayerControls.freeze` / :meth:`~LayerControls.unfreeze`.
- ``store_gradients``: :meth:`~LayerControls.get_gradients` keeps the last backward's gradients.
- ``grad_scale``: multiplies the gradient sent back to the layer's input (-1: gradient reversal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn


# ---------------------------------------------------------------------------- regularizers
class Regularizer:
    """A penalty on one weight tensor: ``reg(weight) -> scalar tensor``."""

    def __call__(self, weight: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)`` (Keras definition: no factor 1/2 on the L2 term)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        for what, v in (("l1", l1), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{what}: expected a finite number >= 0, got {v!r}")
        self.l1 = float(l1)
        self.l2 = float(l2)

    def __call__(self, weight: Tensor) -> Tensor:
        out = weight.new_zeros(())
        if self.l1:
            out = out + self.l1 * weight.abs().sum()
        if self.l2:
            out = out + self.l2 * weight.square().sum()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, L1L2) and (self.l1, self.l2) == (other.l1, other.l2)


class L1(L1L2):
    """``l1 * sum(|w|)``."""

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)

    def __repr__(self) -> str:
        return f"L1(l1={self.l1})"


class L2(L1L2):
    """``l2 * sum(w ** 2)``."""

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)

    def __repr__(self) -> str:
        return f"L2(l2={self.l2})"


RegularizerArg = str | Mapping[str, float] | Regularizer | Callable[[Tensor], Tensor] | None

_REGULARIZER_NAMES: dict[str, Callable[[], Regularizer]] = {
    "l1": L1,
    "l2": L2,
    "l1_l2": lambda: L1L2(l1=0.01, l2=0.01),
    "l1l2": lambda: L1L2(l1=0.01, l2=0.01),
}


def get_regularizer(spec: RegularizerArg, what: str) -> Callable[[Tensor], Tensor] | None:
    """Resolve a regularizer.

    ``None`` → no penalty; ``"l1"``, ``"l2"``, ``"l1_l2"`` → factor 0.01 (Keras defaults);
    ``{"l1": a, "l2": b}`` → :class:`L1L2`; a :class:`Regularizer` or any callable
    ``weight -> scalar tensor`` is used as is.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _REGULARIZER_NAMES:
            raise ValueError(
                f"{what}: expected one of {sorted(_REGULARIZER_NAMES)}, a dict, or a callable, got {spec!r}"
            )
        return _REGULARIZER_NAMES[key]()
    if isinstance(spec, Mapping):
        if not spec or set(spec) - {"l1", "l2"}:
            raise ValueError(f"{what}: a dict regularizer takes the keys 'l1' and/or 'l2', got {dict(spec)!r}")
        return L1L2(**spec)
    if callable(spec):
        return spec
    raise ValueError(f"{what}: expected None, 'l1', 'l2', 'l1_l2', a dict, or a callable, got {spec!r}")


def _penalty(reg: Callable[[Tensor], Tensor], weight: Tensor, where: str) -> Tensor:
    value = reg(weight)
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"regularizer of {where} must return a scalar tensor of shape (), got {shape}")
    return value


def regularization_loss(model: nn.Module) -> Tensor:
    """Sum of the weight penalties of every module in ``model`` that declares regularizers.

    A module declares them in a ``regularizers`` dict ``{parameter name: regularizer}`` (as
    :class:`ConvLSTMCell` does for ``kernel_regularizer`` / ``recurrent_regularizer`` /
    ``bias_regularizer``). Frozen layers are included (their penalty is a constant).

    Returns:
        A scalar tensor (zero, on the model's device and dtype, if nothing is regularized).
    """
    total: Tensor | None = None
    for module_name, module in model.named_modules():
        regs = getattr(module, "regularizers", None)
        if not isinstance(regs, Mapping):
            continue
        for pname, reg in regs.items():
            weight = getattr(module, pname, None)
            if weight is None:
                continue
            value = _penalty(reg, weight, f"{module_name or type(module).__name__}.{pname}")
            total = value if total is None else total + value
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros(
            (),
            device=p.device if p is not None else None,
            dtype=p.dtype if p is not None and p.is_floating_point() else None,
        )
    return total


# ---------------------------------------------------------------------------- gradient scaling
class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` backwards."""
    if scale == 1.0 or not torch.is_grad_enabled() or not x.requires_grad:
        return x
    return _ScaleGradient.apply(x, float(scale))


# ---------------------------------------------------------------------------- the mixin
class LayerControls:
    """Mixin for an ``nn.Module`` layer: name/tags, freezing, stored gradients, gradient scale.

    Call :meth:`_init_controls` at the end of ``__init__`` (after the parameters exist) and
    :meth:`_controls_before_forward` at the start of ``forward``.
    """

    name: str | None
    store_gradients: bool
    grad_scale: float
    regularizers: dict[str, Callable[[Tensor], Tensor]]

    def _init_controls(
        self,
        *,
        name: str | None = None,
        trainable: bool = True,
        store_gradients: bool = False,
        grad_scale: float = 1.0,
        regularizers: Mapping[str, Callable[[Tensor], Tensor] | None] | None = None,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name: expected a str or None, got {name!r}")
        if isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float)) or not math.isfinite(grad_scale):
            raise ValueError(f"grad_scale: expected a finite number, got {grad_scale!r}")
        self.name = name
        self.store_gradients = bool(store_gradients)
        self.grad_scale = float(grad_scale)
        self.regularizers = {k: v for k, v in (regularizers or {}).items() if v is not None}
        self._stored_gradients: dict[str, Tensor] = {}
        self._grad_hooks: dict[str, tuple[int, Any]] = {}
        if not trainable:
            self.freeze()
        self._sync_gradient_hooks()

    # -- names -------------------------------------------------------------------------
    def tag(self, *parts: str) -> str:
        """A TensorBoard tag under this layer's name, e.g. ``layer.tag("grad", "weight_ih")``
        → ``"encoder/grad/weight_ih"`` (the class name stands in when ``name`` is None)."""
        return "/".join([self.name or type(self).__name__, *[str(p) for p in parts if str(p)]])

    # -- update: trainable / freeze / unfreeze -------------------------------------------
    @property
    def trainable(self) -> bool:
        """True when every parameter of the layer requires a gradient. Assigning calls
        :meth:`freeze` (False) or :meth:`unfreeze` (True)."""
        return all(p.requires_grad for p in self.parameters())  # type: ignore[attr-defined]

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self.unfreeze() if value else self.freeze()

    def freeze(self):
        """Stop updating this layer's weights: ``requires_grad=False`` and no leftover ``.grad``,
        so optimizer steps leave them bit-identical. Gradients still flow through the layer
        to its input and initial state."""
        for p in self.parameters():  # type: ignore[attr-defined]
            p.requires_grad_(False)
            p.grad = None
        self._stored_gradients.clear()
        self._sync_gradient_hooks()
        return self

    def unfreeze(self):
        """Train this layer's weights again."""
        for p in self.parameters():  # type: ignore[attr-defined]
            p.requires_grad_(True)
        self._sync_gradient_hooks()
        return self

    # -- store: the last backward's gradients -------------------------------------------
    def _sync_gradient_hooks(self) -> None:
        """Keep one post-accumulate-grad hook on every trainable parameter while
        ``store_gradients`` is on (re-registered after a copy or an unfreeze)."""
        wanted: dict[str, nn.Parameter] = {}
        if self.store_gradients:
            wanted = {n: p for n, p in self.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]
        for n in list(self._grad_hooks):
            pid, handle = self._grad_hooks[n]
            if n not in wanted or id(wanted[n]) != pid:
                handle.remove()
                del self._grad_hooks[n]
        for n, p in wanted.items():
            if n not in self._grad_hooks:
                self._grad_hooks[n] = (id(p), p.register_post_accumulate_grad_hook(self._gradient_hook(n)))

    def _gradient_hook(self, pname: str) -> Callable[[Tensor], None]:
        def hook(param: Tensor) -> None:
            if self.store_gradients and param.grad is not None:
                self._stored_gradients[pname] = param.grad.detach().clone()

        return hook

    def get_gradients(self) -> dict[str, Tensor]:
        """Gradients of the last backward pass by parameter name (copies of ``.grad``, so they
        survive ``optimizer.zero_grad()``). Needs ``store_gradients=True``."""
        if not self.store_gradients:
            raise RuntimeError(
                f"{self.tag()}: get_gradients() needs store_gradients=True "
                "(pass it to the constructor or set layer.store_gradients = True before backward)"
            )
        self._sync_gradient_hooks()
        return dict(self._stored_gradients)

    # -- regularization -----------------------------------------------------------------
    def regularization_loss(self) -> Tensor:
        """Weight penalties of this layer (and of any regularized module inside it)."""
        return regularization_loss(self)  # type: ignore[arg-type]

    # -- forward helpers ----------------------------------------------------------------
    def _controls_before_forward(self, x: Tensor) -> Tensor:
        """Hook bookkeeping and the input gradient scale; returns ``x`` (identity forward)."""
        if self.store_gradients or self._grad_hooks:
            self._sync_gradient_hooks()
        return scale_gradient(x, self.grad_scale)

    def _controls_repr(self) -> str:
        parts = []
        if not self.trainable:
            parts.append("trainable=False")
        if self.store_gradients:
            parts.append("store_gradients=True")
        if self.grad_scale != 1.0:
            parts.append(f"grad_scale={self.grad_scale}")
        return ", ".join(parts)
