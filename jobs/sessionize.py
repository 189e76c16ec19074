"""spark-submit entry point for `nextplay sessionize`: `spark-submit jobs/sessionize.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["sessionize", *sys.argv[1:]]))
