import sys

from init.cli import main

sys.exit(main())
