"""The adapters' speed options, `precision="bf16"` and `compile=True`, in every framework.

bf16 is mixed precision: convolutions in bfloat16 (8 bits of mantissa, relative rounding
2**-8 ~ 4e-3), weights, optimiser step and loss in float32. So bf16 logits must differ from
the fp32 ones of the same weights by far more than float32 rounding, yet agree to a few
percent; and each framework must show that its convolutions really ran in bfloat16.
compile (torch.compile, XLA, Gluon's static graph) changes how the same arithmetic is
scheduled, not what it computes: logits and losses agree to float32 rounding. JAX is always
compiled (jax.jit): compile=True runs the same programs.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common.core.init import init_weights
from common.core.spec import get_spec
from tests.helpers import bf16_refused_here, blocks_per_stage, fw_name

SPEC = get_spec("cifar_resnet20")  # 3 channels, 10 classes, 19 convolutions
BATCH, LR = 4, 0.05
# For compile=True: SPEC with one block per stage, every layer kind of SPEC (stem, BatchNorm,
# a plain block and a stride-2 one with option A's padded shortcut, the head) in 7 convolutions.
# torch.compile's Inductor compiles each layer anew on a cold cache; a compiler bug is no more
# likely to hide in the 19th convolution than in the 7th.
COMPILED_SPEC = blocks_per_stage(SPEC)


def batch(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(BATCH, SPEC.in_channels, size, size)).astype(np.float32),
            rng.integers(0, SPEC.num_classes, BATCH).astype(np.int64))


def rel_max(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the logit scale."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_bf16_logits_are_rounded_to_bfloat16_and_leave_fp32_adapters_alone(fw):
    """Same weights: bf16 eval logits are float32 arrays that carry bfloat16 rounding."""
    w, (x, _) = init_weights(SPEC, 0), batch(32)
    if bf16_refused_here(fw, lambda: fw.Adapter(SPEC, w, precision="bf16")):
        return
    fp32 = fw.Adapter(SPEC, w).logits(x)
    bf16 = fw.Adapter(SPEC, w, precision="bf16")
    assert bf16.precision == "bf16"
    lo = bf16.logits(x)
    assert lo.dtype == np.float32
    # Measured 6e-3 in all three (float32 rounding: ~1e-7).
    assert 1e-4 < rel_max(lo, fp32) < 3e-2, rel_max(lo, fp32)
    # bf16 is this adapter's own state: an fp32 adapter made afterwards computes as before
    # (Keras's global dtype policy restored; MXNet's process-wide amp.init never called).
    after = fw.Adapter(SPEC, w)
    assert after.precision == "fp32"
    again = after.logits(x)
    assert again.dtype == np.float32 and np.array_equal(again, fp32)


def test_bf16_convolutions_run_in_bfloat16_on_float32_weights(fw):
    """Each framework's own evidence that the convolutions compute in bfloat16."""
    w, (x, y) = init_weights(SPEC, 0), batch(16)
    if bf16_refused_here(fw, lambda: fw.Adapter(SPEC, w, precision="bf16")):
        return
    a = fw.Adapter(SPEC, w, precision="bf16")
    name = fw_name(fw)
    if name == "torch":
        import torch
        convs = [m for m in a.model.modules() if isinstance(m, torch.nn.Conv2d)]
        seen = []
        for conv in convs:
            conv.register_forward_hook(lambda m, i, out: seen.append((out.dtype, m.weight.dtype)))
        a.logits(x)
        a.train_step(x, y)
        assert len(seen) == 2 * len(convs) == 2 * 19
        assert set(seen) == {(torch.bfloat16, torch.float32)}
    elif name == "tf":
        import tensorflow as tf
        from tensorflow import keras
        conv = a.model.stem.conv
        assert a.model.dtype_policy.name == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "float32"  # the global policy restored
        assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
        assert conv(tf.zeros((1, 16, 16, SPEC.in_channels))).dtype == tf.bfloat16
    elif name == "jax":
        import jax
        import jax.numpy as jnp
        X = jnp.zeros((16, 32, 32, SPEC.in_channels), jnp.float32)
        programs = (a._eval.lower(a.params, a.stats, X), a._train_forward.lower(a.params, a.stats, X))
        convs = [line for p in programs for line in p.as_text().splitlines()
                 if "stablehlo.convolution" in line]
        assert len(convs) == 2 * 19
        assert all(line.rsplit("->", 1)[1].strip().endswith("xbf16>") for line in convs), convs[0]
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(a.params))
    else:
        from mxnet.contrib import amp
        a.logits(x)
        _, graph = a._net._cached_graph  # the graph the adapter runs
        internals = graph.get_internals()
        convs = [n for n in internals.list_outputs() if "conv" in n and n.endswith("_fwd_output")]
        assert len(convs) == 19
        for n in convs:
            assert internals[n].infer_type(data="float32")[1] == [amp.amp.bfloat16], n
    assert all(v.dtype == np.float32 for v in a.get_weights().values())


def test_bf16_training_lowers_the_loss_and_keeps_float32_weights(fw):
    """Five SGD steps on one batch of four (it can be memorised); the float32 master weights
    move and stay float32."""
    w, (x, y) = init_weights(SPEC, 0), batch(16, seed=1)
    if bf16_refused_here(fw, lambda: fw.Adapter(SPEC, w, lr=LR, precision="bf16")):
        return
    fp32_loss = fw.Adapter(SPEC, w, lr=LR).loss_and_grads(x, y)[0]
    a = fw.Adapter(SPEC, w, lr=LR, precision="bf16")
    loss, grads = a.loss_and_grads(x, y)
    assert 0 < abs(loss - fp32_loss) < 3e-2 * fp32_loss, (loss, fp32_loss)
    assert all(g.dtype == np.float32 and np.isfinite(g).all() for g in grads.values())
    losses = [a.train_step(x, y)[0] for _ in range(5)]
    assert losses[-1] < 0.5 * losses[0], losses
    after = a.get_weights()
    assert all(v.dtype == np.float32 for v in after.values())
    assert not np.array_equal(after["stem.conv.weight"], w["stem.conv.weight"])


@pytest.mark.parametrize("precision, dtype, message", [
    ("bf16", "float64", "precision: expected dtype float32 with bf16 (mixed precision keeps "
                        "float32 weights), got dtype 'float64'"),
    ("fp16", "float64", "precision: expected dtype float32 with fp16 (mixed precision keeps "
                        "float32 weights), got dtype 'float64'"),
    ("half", "float32", "precision: expected one of fp32, bf16, fp16, got 'half'"),
    ("bfloat16", "float32", "precision: expected one of fp32, bf16, fp16, got 'bfloat16'"),
])
def test_bad_precision_is_refused_with_the_same_message_everywhere(fw, precision, dtype, message):
    with pytest.raises(ValueError) as err:
        fw.Adapter(SPEC, init_weights(SPEC, 0), dtype=dtype, precision=precision)
    assert str(err.value) == message


def test_mx_adapters_refuse_a_process_where_amp_init_was_called():
    """mxnet.contrib.amp.init() rewires MXNet's operators for the whole process, for good (so
    the bf16 adapter never calls it); after it, an fp32 adapter would quietly compute in
    bfloat16, so none is made. In a fresh process, to leave this one as it is."""
    code = textwrap.dedent("""
        from mxnet.contrib import amp
        from common.core.init import init_weights
        from common.core.spec import get_spec
        from resnet_mx.adapter import Adapter
        spec = get_spec("cifar_resnet20")
        w = init_weights(spec, 0)
        try:
            Adapter(spec, w, precision="bf16")  # leaves the process as it was: no error next
        except ValueError as err:  # or refused, on a CPU without AVX-512
            assert "expected a CPU with AVX-512" in str(err), err
        Adapter(spec, w)
        amp.init(target_dtype="bfloat16")
        Adapter(spec, w)
        """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(
        "RuntimeError: precision: expected MXNet's own operators, got a process in which "
        "mxnet.contrib.amp.init() was called"), run.stderr[-2000:]


def _compiled_by_the_framework(a, x: np.ndarray) -> bool:
    """The framework's own sign that the adapter's steps run its graph compiler."""
    if a.framework == "torch":
        import torch
        return isinstance(a._net, torch._dynamo.eval_frame.OptimizedModule) and \
            a._net._orig_mod is a.model
    if a.framework == "tf":
        attr = a._forward.get_concrete_function(a._inputs(x), False).function_def.attr
        return "_XlaMustCompile" in attr and attr["_XlaMustCompile"].b
    flags = dict(a.model._flags)  # what hybridize() was told
    return bool(flags.get("static_alloc") and flags.get("static_shape"))


def test_compiled_adapter_computes_what_the_plain_one_does(fw):
    """Eval logits, one train step's loss and the weights after it, within 1e-5."""
    w, (x, y) = init_weights(COMPILED_SPEC, 0), batch(16, seed=2)
    plain = fw.Adapter(COMPILED_SPEC, w, lr=LR)
    compiled = fw.Adapter(COMPILED_SPEC, w, lr=LR, compile=True)
    assert (plain.compiled, compiled.compiled) == (False, True)
    if plain.framework == "jax":  # always compiled: both run the same jitted programs
        assert compiled._step is plain._step and hasattr(plain._step, "lower")
    else:
        assert _compiled_by_the_framework(compiled, x) and not _compiled_by_the_framework(plain, x)
    assert rel_max(compiled.logits(x), plain.logits(x)) <= 1e-5
    loss, compiled_loss = plain.train_step(x, y)[0], compiled.train_step(x, y)[0]
    assert abs(compiled_loss - loss) <= 1e-5 * loss
    a, b = plain.get_weights(), compiled.get_weights()
    worst = max((rel_max(b[n], a[n]), n) for n in a if np.abs(a[n]).max() > 0)
    assert worst[0] <= 1e-5, worst
    assert not np.array_equal(b["stem.conv.weight"], w["stem.conv.weight"])


def _channels_last_in_memory(a, x) -> bool:
    """PyTorch: every 4-d parameter and the batch laid out as torch.channels_last."""
    import torch
    weights = [p for p in a.model.parameters() if p.dim() == 4]
    return (all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
            and a._tensor(x, False).is_contiguous(memory_format=torch.channels_last))


def test_channels_last_adapter_computes_what_the_default_does(fw):
    """channels_last=True (resnet-bench --tuned's fastest fp32 option for PyTorch) puts
    PyTorch's parameters and batches in torch.channels_last memory format; TensorFlow and JAX
    compute channels-last anyway, MXNet in NCHW, and the adapter says which. The same
    arithmetic: float32 logits within 1e-5; in float64 (where a change of meaning cannot hide
    in rounding), the gradients, three SGD-with-momentum steps' losses, and the weights and
    optimiser state after them within 1e-9, as canonical (NCHW) arrays of the default's shapes."""
    from common.core.optim import OptimizerConfig
    w, (x, y) = init_weights(SPEC, 0), batch(16, seed=2)
    plain, last = fw.Adapter(SPEC, w, lr=LR), fw.Adapter(SPEC, w, lr=LR, channels_last=True)
    in_memory = {"torch": (False, True), "tf": (True, True), "jax": (True, True),
                 "mx": (False, False)}[plain.framework]
    assert (plain.channels_last, last.channels_last) == in_memory
    if plain.framework == "torch":
        assert _channels_last_in_memory(last, x) and not _channels_last_in_memory(plain, x)
    assert rel_max(last.logits(x), plain.logits(x)) <= 1e-5

    opt = OptimizerConfig(lr=LR, momentum=0.9, weight_decay=5e-4)
    plain, last = (fw.Adapter(SPEC, w, optimizer=opt, dtype="float64", channels_last=c)
                   for c in (False, True))
    if plain.framework == "torch":
        assert _channels_last_in_memory(last, x)
    (loss, grads), (last_loss, last_grads) = plain.loss_and_grads(x, y), last.loss_and_grads(x, y)
    assert abs(last_loss - loss) <= 1e-12 * loss
    assert max(rel_max(last_grads[n], grads[n]) for n in grads if np.abs(grads[n]).max() > 0) \
        <= 1e-9
    for _ in range(3):
        loss, last_loss = plain.train_step(x, y)[0], last.train_step(x, y)[0]
        assert abs(last_loss - loss) <= 1e-12 * loss
    for a, b in ((plain.get_weights(), last.get_weights()),
                 (plain.optimizer_state(), last.optimizer_state())):
        assert a and a.keys() == b.keys() and all(a[n].shape == b[n].shape for n in a)
        worst = max((rel_max(b[n], a[n]), n) for n in a if np.abs(a[n]).max() > 0)
        assert worst[0] <= 1e-9, worst
