"""`python -m resnet_tf.train`: d2l's training recipe for ResNet in TensorFlow/Keras (flags: --help)."""
import sys

from common.commands.train import main

if __name__ == "__main__":
    sys.exit(main("tf"))
