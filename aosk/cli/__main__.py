import sys

from aosk.cli import main

sys.exit(main())
