"""`python -m common.crosscheck`, the command's older spelling: runs common/commands/crosscheck.py (`resnet3 crosscheck`)."""
import sys

from common.commands.crosscheck import main

if __name__ == "__main__":
    sys.exit(main())
