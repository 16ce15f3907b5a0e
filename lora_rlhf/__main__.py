"""`python -m lora_rlhf ...`: the same command line as the `lora-rlhf` script."""

import sys

from lora_rlhf.cli.main import main

sys.exit(main())
