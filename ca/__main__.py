import sys

from ca.cli import main

sys.exit(main())
