"""spark-submit entry point for `nextplay generate`: `spark-submit jobs/generate.py --conf conf/local.yml [...]`."""
import sys

from nextplay.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
