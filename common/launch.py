"""`python -m common.launch`, the command's older spelling: runs common/commands/launch.py (`resnet3 launch`)."""
import sys

from common.commands.launch import main

if __name__ == "__main__":
    sys.exit(main())
