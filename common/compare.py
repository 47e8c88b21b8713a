"""`python -m common.compare`, the command's older spelling: runs common/commands/compare.py (`resnet3 compare`)."""
import sys

from common.commands.compare import main

if __name__ == "__main__":
    sys.exit(main())
