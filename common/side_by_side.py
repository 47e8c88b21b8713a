"""`python -m common.side_by_side`, the command's older spelling: runs common/commands/side_by_side.py (`resnet3 side-by-side`)."""
import sys

from common.commands.side_by_side import main

if __name__ == "__main__":
    sys.exit(main())
