"""spark-submit entry point for `nextplay score`: `spark-submit jobs/score.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
