"""Optimiser steps in float64: SGD with momentum and L2 weight decay, Adam with and without it.

Two kinds of test, on a small network (no conv biases: a conv bias before a BatchNorm has an
exact gradient of 0, and Adam turns its rounding noise into a full-size step of random sign):
- across frameworks: the three adapters take the same steps from the same weights on the same
  batches; the loss and every trainable parameter are compared after every step;
- against a formula: each framework's step, given the gradient its adapter returns, equals a
  NumPy version of that framework's own update (docs/framework-differences.md, "Optimiser updates
  in float64"). This is what catches an adapter that drops weight decay, decouples it
  (AdamW-style), drops momentum or moves Adam's epsilon.

BatchNorm running statistics are left out (PyTorch folds in the unbiased variance, Keras and
Gluon the biased one; test_fidelity.py pins that). Parameters are read in float64 from the live
framework tensors: `get_weights()` rounds to float32, which would hide everything below 6e-8.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import numpy as np
import pytest

from common.frameworks import FRAMEWORKS
from common.core.optim import OptimizerConfig
from common.core.oracle import zero_gradient_biases
from common.core.spec import ResNetSpec, Stage, Stem
from tests.helpers import MODULES
from tests.test_fidelity import batches, random_weights, rel

SPEC = ResNetSpec("opt_small", (Stage(8, 1), Stage(16, 1, 2, True)), stem=Stem(8, 3, 1, False),
                  in_channels=3, num_classes=5, conv_bias=False)
SIZE, STEPS = 8, 4
PAIRS = list(itertools.combinations(FRAMEWORKS, 2))


def f32(value: float) -> float:
    """The value a hyperparameter holds once a framework stores it as float32."""
    return float(np.float32(value))


# Cross-framework runs use hyperparameters that float32 holds exactly. Gluon rounds momentum,
# betas, eps and weight decay to float32, Keras momentum and the betas of its bias correction,
# PyTorch none (the adapters round only lr): with momentum 0.9, PyTorch's parameters part from
# the others' by 6e-9 after two steps and 2e-8 after four, which the formula tests pin instead.
EXACT = dict(lr=2.0 ** -4, momentum=0.875, weight_decay=2.0 ** -10, betas=(0.875, 0.998046875),
             eps=2.0 ** -7)  # eps this large makes its placement matter (see the Adam tests)
CROSS = {
    "sgd": OptimizerConfig("sgd", EXACT["lr"], EXACT["momentum"], EXACT["weight_decay"]),
    "adam": OptimizerConfig("adam", EXACT["lr"] / 8, betas=EXACT["betas"], eps=EXACT["eps"]),
    "adam_wd": OptimizerConfig("adam", EXACT["lr"] / 8, weight_decay=EXACT["weight_decay"],
                               betas=EXACT["betas"], eps=EXACT["eps"]),
}
# Formula tests use the usual values, whose float32 rounding each formula spells out.
USUAL = {
    "sgd": OptimizerConfig("sgd", 0.05, momentum=0.9, weight_decay=5e-4),
    "adam_wd": OptimizerConfig("adam", 0.01, weight_decay=5e-4),
    "adam_eps": OptimizerConfig("adam", 0.01, eps=1e-2),  # no weight decay; eps placement matters
}
# Measured on this project's machine (docs/framework-differences.md, "Optimiser updates"): steps
# equal their formula to 1.6e-14 of the step; SGD and Adam runs agree to 4.4e-16 in loss and
# 3e-16 relative in every parameter after every step (Gluon's Adam: see ADAM_GLUON_BOUNDS).
LOSS_BOUND, PARAM_BOUND, FORMULA_BOUND = 1e-12, 1e-12, 1e-12


class Step(NamedTuple):
    before: dict[str, np.ndarray]  # trainable parameters before the step, float64
    grads: dict[str, np.ndarray]   # the adapter's gradient at `before`
    loss: float                    # the loss at `before`
    after: dict[str, np.ndarray]


def trainable_float64(adapter) -> dict[str, np.ndarray]:
    """The adapter's trainable parameters, canonical layout, copied in the compute dtype."""
    if adapter.framework == "torch":
        from resnet_torch.weights import canonical_tensors
        return {n: t.detach().numpy().copy()
                for n, t in canonical_tensors(adapter.model).items() if t.requires_grad}
    if adapter.framework == "tf":
        from resnet_tf.weights import to_canonical_layout
        return {n: to_canonical_layout(v.numpy()) for n, v in adapter.trainable.items()}
    if adapter.framework == "jax":
        from flax import traverse_util
        from resnet_jax.weights import flax_path, to_canonical_layout
        flat = traverse_util.flatten_dict(adapter.params)
        return {n: np.array(to_canonical_layout(np.asarray(flat[flax_path(n)[1:]])))
                for n in adapter.trainable}
    return {n: p.data().asnumpy() for n, p in adapter.trainable.items()}


@functools.cache
def trajectory(fw: str, opt: OptimizerConfig, torch_eps_per_step: bool = False) -> list[Step]:
    """STEPS optimiser steps of a fresh float64 adapter, with what each started from.
    torch_eps_per_step: give PyTorch (and JAX, whose adapter places eps as PyTorch does)
    eps / sqrt(1 - beta2**t) at step t, which is where Keras and Gluon effectively put eps
    (docs/framework-differences.md)."""
    a = MODULES[fw].Adapter(SPEC, random_weights(SPEC, 0), optimizer=opt, dtype="float64")
    steps = []
    for t, (x, y) in enumerate(batches(SPEC, SIZE, STEPS), 1):
        before = trainable_float64(a)
        assert all(v.dtype == np.float64 for v in before.values())
        loss, grads = a.loss_and_grads(x, y)
        if torch_eps_per_step and fw == "torch":
            a.optimizer.param_groups[0]["eps"] = opt.eps / math.sqrt(1 - opt.betas[1] ** t)
        elif torch_eps_per_step:  # JAX's adapter reads its OptimizerConfig at every step
            a.opt = dataclasses.replace(a.opt, eps=opt.eps / math.sqrt(1 - opt.betas[1] ** t))
        assert math.isclose(a.train_step(x, y)[0], loss, rel_tol=1e-14), \
            "train_step must start from the loss (and gradient) that loss_and_grads saw"
        steps.append(Step(before, grads, loss, trainable_float64(a)))
    return steps


# One update per framework and optimiser, as each framework computes it in float64, for one
# parameter array: w the value before step t, g its gradient, s its state (a dict, empty at t=1).
def torch_sgd(o, t, w, g, s):
    g = g + o.weight_decay * w                  # L2: weight decay joins the gradient
    s["buf"] = g if t == 1 else o.momentum * s["buf"] + g
    return w - f32(o.lr) * s["buf"]             # lr: the adapter's float32 value


def keras_sgd(o, t, w, g, s):
    g = g + o.weight_decay * w                  # the adapter's L2 term (Keras's own is decoupled)
    s["m"] = f32(o.momentum) * s.get("m", 0.0) - f32(o.lr) * g
    return w + s["m"]


def gluon_sgd(o, t, w, g, s):
    s["m"] = f32(o.momentum) * s.get("m", 0.0) - f32(o.lr) * (g + f32(o.weight_decay) * w)
    return w + s["m"]


def torch_adam(o, t, w, g, s):
    (b1, b2), g = o.betas, g + o.weight_decay * w
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    m_hat, v_hat = s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)
    return w - f32(o.lr) * m_hat / (np.sqrt(v_hat) + o.eps)


def keras_adam(o, t, w, g, s):
    (b1, b2), g = o.betas, g + o.weight_decay * w
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    # Keras casts the betas to float32 for the bias correction only ("1 - beta" stays exact).
    alpha = f32(o.lr) * math.sqrt(1 - f32(b2) ** t) / (1 - f32(b1) ** t)
    return w - alpha * s["m"] / (np.sqrt(s["v"]) + o.eps)


def gluon_adam(o, t, w, g, s):
    (b1, b2), g = o.betas, g + f32(o.weight_decay) * w
    # Python computes the corrected step size in double; the operator takes it, the betas,
    # eps and weight decay as float32.
    lr_t = f32(o.lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t))
    b1, b2 = f32(b1), f32(b2)
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    return w - lr_t * s["m"] / (np.sqrt(s["v"]) + f32(o.eps))


UPDATES = {("torch", "sgd"): torch_sgd, ("tf", "sgd"): keras_sgd, ("mx", "sgd"): gluon_sgd,
           ("torch", "adam"): torch_adam, ("tf", "adam"): keras_adam, ("mx", "adam"): gluon_adam,
           # JAX's adapter writes PyTorch's formulas (resnet_jax/adapter.py)
           ("jax", "sgd"): torch_sgd, ("jax", "adam"): torch_adam}
TORCH_EPS = ("torch", "jax")  # the adapters that place Adam's eps as PyTorch does


def formula_errors(fw: str, opt: OptimizerConfig, steps: list[Step]) -> list[float]:
    """Per step, the worst relative error over the parameters of the framework's step
    (after - before) against the formula's step from the same `before` and gradient."""
    update, state, errors = UPDATES[fw, opt.name], {}, []
    for t, s in enumerate(steps, 1):
        predicted = {n: update(opt, t, w, s.grads[n], state.setdefault(n, {}))
                     for n, w in s.before.items()}
        errors.append(max(rel(s.after[n] - w, predicted[n] - w) for n, w in s.before.items()))
    return errors


def test_small_network_has_no_zero_gradient_parameters():
    assert not zero_gradient_biases(SPEC)


@pytest.mark.parametrize("name", list(USUAL))
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_framework_step_matches_its_documented_formula(fw, name):
    opt = USUAL[name]
    steps = trajectory(fw, opt)
    assert sorted(steps[0].grads) == sorted(steps[0].before)
    errors = formula_errors(fw, opt, steps)
    assert max(errors) <= FORMULA_BOUND, f"{fw} {name}: per-step errors {errors}"
    moved = max(rel(steps[-1].after[n], steps[0].before[n]) for n in steps[0].before)
    assert moved > 1e-2, f"{fw} {name}: the steps barely moved the parameters ({moved:.1e})"


def compare_steps(a: list[Step], b: list[Step], loss_bound: float, param_bound: float) -> None:
    for t, (sa, sb) in enumerate(zip(a, b), 1):
        diff = abs(sa.loss - sb.loss)
        assert diff <= loss_bound, f"step {t}: losses {sa.loss!r} vs {sb.loss!r}"
        worst = max(sa.after, key=lambda n: rel(sa.after[n], sb.after[n]))
        err = rel(sa.after[worst], sb.after[worst])
        assert err <= param_bound, f"after step {t}: {worst} relative difference {err:.2e}"


@pytest.mark.parametrize("a,b", PAIRS)
def test_sgd_with_momentum_and_weight_decay_agrees_across_frameworks_step_by_step(a, b):
    compare_steps(trajectory(a, CROSS["sgd"]), trajectory(b, CROSS["sgd"]), LOSS_BOUND,
                  PARAM_BOUND)


# Gluon hands Adam's bias-corrected step size to its operator as float32 (2**-24 relative
# rounding on every step), so it agrees with PyTorch and Keras to about 1e-8, not 1e-12
# (measured: losses 1.3e-9, parameters 5.6e-9 relative; the formula test pins the rounding).
ADAM_GLUON_BOUNDS = (1e-8, 3e-8)


@pytest.mark.parametrize("name", ["adam", "adam_wd"])
@pytest.mark.parametrize("a,b", PAIRS)
def test_adam_agrees_across_frameworks_step_by_step_once_eps_is_placed_alike(a, b, name):
    """PyTorch (and JAX) are given, at step t, the eps Keras and Gluon effectively use there."""
    bounds = ADAM_GLUON_BOUNDS if "mx" in (a, b) else (LOSS_BOUND, PARAM_BOUND)
    compare_steps(trajectory(a, CROSS[name], a in TORCH_EPS),
                  trajectory(b, CROSS[name], b in TORCH_EPS), *bounds)


def test_adam_epsilon_placement_separates_pytorch_from_keras_by_the_predicted_step():
    """Same weights, same gradient, first step: PyTorch's Adam step is -lr g / (|g| + eps),
    Keras's -lr g / (|g| + eps / sqrt(1 - beta2)): with eps 2**-7 a large difference, which must
    be exactly the one predicted."""
    opt = CROSS["adam"]
    (torch_step,), (keras_step,) = (trajectory(fw, opt)[:1] for fw in ("torch", "tf"))
    lr, eps, b2 = opt.lr, opt.eps, opt.betas[1]
    for n, w in torch_step.before.items():
        g = torch_step.grads[n]
        predicted = -lr * g / (np.abs(g) + eps) + lr * g / (np.abs(g) + eps / math.sqrt(1 - b2))
        measured = torch_step.after[n] - keras_step.after[n]
        assert rel(predicted, torch_step.after[n] - w) > 0.05, f"{n}: eps placement barely matters"
        err = rel(measured, predicted)  # measured: 2e-14
        assert err <= 1e-12, f"{n}: the difference is off the prediction by {err:.2e}"
