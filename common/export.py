"""`python -m common.export`, the command's older spelling: runs common/commands/export.py (`resnet3 export`)."""
import sys

from common.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
