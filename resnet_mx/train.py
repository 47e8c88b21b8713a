"""`python -m resnet_mx.train`: d2l's training recipe for ResNet in MXNet Gluon (flags: --help)."""
import sys

from common.commands.train import main

if __name__ == "__main__":
    sys.exit(main("mx"))
