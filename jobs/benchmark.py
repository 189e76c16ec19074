"""spark-submit entry point for `nextplay benchmark`: `spark-submit jobs/benchmark.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
