"""`python -m common.bench`, the command's older spelling: runs common/commands/bench.py (`resnet3 bench`)."""
import sys

from common.commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
