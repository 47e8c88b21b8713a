"""`python -m common <command> ...`: the same as `resnet3 <command> ...` (common/commands/main.py)."""
import sys

from common.commands.main import main

if __name__ == "__main__":
    sys.exit(main())
