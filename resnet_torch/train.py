"""`python -m resnet_torch.train`: d2l's training recipe for ResNet in PyTorch (flags: --help)."""
import sys

from common.commands.train import main

if __name__ == "__main__":
    sys.exit(main("torch"))
