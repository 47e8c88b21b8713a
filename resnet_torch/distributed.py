"""PyTorch's own data-parallel engine for the common training loop: a `torch.distributed`
process group (gloo on CPU, NCCL on GPU) and `DistributedDataParallel`.

`join(workers, rank)` joins the group that torchrun (or `common.commands.launch`) describes in the
environment (MASTER_ADDR, MASTER_PORT); `Adapter(..., engine=join(...))` then replicates the
model with DDP, which averages the gradients of the workers' local mean losses: with equal
shares that is the gradient of the global batch's mean loss, the single process's.

BatchNorm: without sync_bn each worker normalises its own share with its own batch statistics,
which is NOT the single process's function (the gradients differ). The running statistics are
averaged over the workers after every step, so that every worker holds the same weights (for
running_mean that is the single process's update, for running_var not quite). With sync_bn
every BatchNorm2d normalises with the statistics of the global batch (`SyncBatchNorm2d`, ours,
on CPU; torch.nn.SyncBatchNorm on GPU, which refuses CPU modules).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as autograd_all_reduce
from torch.nn.parallel import DistributedDataParallel

from common.core.errors import Error


class Engine:
    """This process's place in the group, and the few collectives the training loop needs."""

    def __init__(self, workers: int, rank: int, sync_bn: bool, device: torch.device):
        self.workers, self.rank, self.sync_bn, self.device = workers, rank, sync_bn, device
        self._open = True

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The float64 elementwise sum of `values` over the workers (for metrics)."""
        t = torch.from_numpy(np.array(values, dtype=np.float64)).to(self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        """Leave the group; a second call does nothing."""
        if self._open and dist.is_initialized():
            dist.destroy_process_group()
        self._open = False

    def prepare(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """The model on this worker's device, with synchronised BatchNorm if asked; call it
        before the optimiser is made (it keeps the parameter objects, names and values).
        compile: torch.compile will trace the model, which the autograd all-reduce refuses,
        so our synchronised layers stay eager (a graph break each)."""
        model = model.to(self.device)
        if not self.sync_bn:
            return model
        model = convert_sync_batchnorm(model)
        if compile:  # torch.compiler.disable imports dynamo (~1 s): only when compiling
            for m in model.modules():
                if isinstance(m, SyncBatchNorm2d):
                    m.forward = torch.compiler.disable(m.forward)
        return model

    def replicate(self, model: nn.Module) -> DistributedDataParallel:
        """DDP over the prepared model. DDP copies rank 0's parameters and buffers to every
        worker here. Its per-forward buffer broadcast (rank 0's running statistics before each
        forward) is off: with sync_bn the running statistics are already equal everywhere,
        without it `average_running_stats` keeps them equal after each step. (torch 2.13
        deprecates broadcast_buffers for forward_sync_buffers, which still syncs at init.)"""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def average_running_stats(self, model: nn.Module) -> None:
        """Replace every worker's BatchNorm running mean and variance by their mean over the
        workers (one all-reduce). A no-op with sync_bn, where they are already equal."""
        if self.sync_bn:
            return
        stats = [t for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for t in (m.running_mean, m.running_var) if t is not None]
        if not stats:
            return
        flat = torch.cat([t.reshape(-1) for t in stats])
        dist.all_reduce(flat)
        flat /= self.workers
        with torch.no_grad():
            for t, v in zip(stats, flat.split([t.numel() for t in stats])):
                t.copy_(v.view_as(t))


def join(workers: int, rank: int, sync_bn: bool = False) -> Engine:
    """Join the process group that torchrun or `common.commands.launch` describes in the environment
    (MASTER_ADDR, MASTER_PORT; LOCAL_RANK picks the GPU): NCCL when CUDA is there, else gloo."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    if not (isinstance(rank, int) and 0 <= rank < workers):
        raise ValueError(f"rank: expected an integer in [0, {workers}), got {rank!r}")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise Error(f"{', '.join(missing)}: expected the rendezvous address in the "
                    f"environment (torchrun and common.commands.launch set it), got nothing")
    for key, value in (("WORLD_SIZE", workers), ("RANK", rank)):
        if os.environ.get(key) not in (None, str(value)):  # torchrun's own view must agree
            raise Error(f"{key}: expected {value} (join's argument), got "
                        f"{os.environ[key]} in the environment")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # NCCL needs it before the group is made
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", world_size=workers, rank=rank)
    return Engine(workers, rank, bool(sync_bn), device)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with the statistics of the global batch, on CPU (torch.nn.SyncBatchNorm
    refuses CPU modules). In training, one all-reduce per layer sums the per-channel count, sum
    and sum of squares over the workers; the all-reduce is autograd's own
    (torch.distributed.nn.functional), so the backward pass sums the statistics' gradients over
    the workers too, and DDP's average of the parameter gradients is then the single process's
    gradient. The running statistics are updated as one BatchNorm2d on the whole batch
    (unbiased variance with the global count), and so are equal on every worker.

    The variance is E[x^2] - E[x]^2 of the global batch: exact in float64, but in float32 it
    loses digits where a channel's mean is large against its spread (torch's CUDA SyncBatchNorm
    combines per-worker means and variances instead, at the price of a second collective)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        local = torch.cat([count, x.sum((0, 2, 3)), (x * x).sum((0, 2, 3))])
        with warnings.catch_warnings():  # torch 2.13 deprecates it (FutureWarning on every
            warnings.simplefilter("ignore", FutureWarning)  # call) for a private module's one
            total = autograd_all_reduce(local)
        n = total[0]
        mean = total[1:c + 1] / n
        var = (total[c + 1:] / n - mean * mean).clamp(min=0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` synchronised over the workers, in place: torch's
    SyncBatchNorm for a module on GPU, `SyncBatchNorm2d` on CPU. The new layers hold the old
    ones' parameter and buffer objects, so names, values and an optimiser made later agree."""
    if any(p.is_cuda for p in module.parameters()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, key, getattr(child, key))
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
