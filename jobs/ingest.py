"""spark-submit entry point for `nextplay ingest`: `spark-submit jobs/ingest.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
