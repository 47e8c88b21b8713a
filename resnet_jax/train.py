"""`python -m resnet_jax.train`: d2l's training recipe for ResNet in JAX/Flax (flags: --help)."""
import sys

from common.commands.train import main

if __name__ == "__main__":
    sys.exit(main("jax"))
