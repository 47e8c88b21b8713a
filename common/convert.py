"""`python -m common.convert`, the command's older spelling: runs common/commands/convert.py (`resnet3 convert`)."""
import sys

from common.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
