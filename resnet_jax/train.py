"""`python -m resnet_jax.train`: d2l's training recipe for ResNet in JAX/Flax (flags: --help)."""
import sys

from common.commands.cli import sigterm_to_the_main_thread
from common.commands.train import main

if __name__ == "__main__":
    # Before JAX starts its threads: SIGTERM must reach the main thread only (see the function).
    sigterm_to_the_main_thread()
    sys.exit(main("jax"))
