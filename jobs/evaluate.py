"""spark-submit entry point for `nextplay evaluate`: `spark-submit jobs/evaluate.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
