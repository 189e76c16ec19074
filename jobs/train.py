"""spark-submit entry point for `nextplay train`: `spark-submit jobs/train.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
