"""spark-submit entry point for `nextplay maintain`: `spark-submit jobs/maintain.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
