"""The small PyTorch adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. The only thing an adapter knows is its framework.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from common.spec import ResNetSpec
from common.weights import Weights
from resnet_torch.model import ResNet
from resnet_torch.weights import canonical_tensors, from_canonical, to_canonical


class Adapter:
    framework = "torch"

    def __init__(self, spec: ResNetSpec, weights: Weights, lr: float = 0.05):
        self.model = from_canonical(ResNet(spec), weights)
        self.spec = spec
        self.lr = lr
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        self.model.train(training)
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name."""
        self.model.train()
        self.model.zero_grad()
        loss = F.cross_entropy(self.model(torch.from_numpy(x)), torch.from_numpy(y).long())
        loss.backward()
        return float(loss.detach()), {n: t.grad.numpy().copy()
                             for n, t in canonical_tensors(self.model).items() if t.grad is not None}

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimiser step on a batch; returns the batch's mean loss before the step."""
        self.model.train()
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(torch.from_numpy(x)), torch.from_numpy(y).long())
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    def set_weights(self, weights: Weights) -> None:
        from_canonical(self.model, weights)
