"""spark-submit entry point for `nextplay sql`: `spark-submit jobs/sql.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["sql", *sys.argv[1:]]))
