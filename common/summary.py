"""`python -m common.summary`, the command's older spelling: runs common/commands/summary.py (`resnet3 summary`)."""
import sys

from common.commands.summary import main

if __name__ == "__main__":
    sys.exit(main())
