"""Moved: `lora-rlhf ablate [options] RUN_DIR [KEY=VALUE ...]` (lora_rlhf/pipeline/ablation/); this shim runs it."""

import sys

from lora_rlhf.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
