"""spark-submit entry point for `nextplay pipeline`: `spark-submit jobs/pipeline.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
