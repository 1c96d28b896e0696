import sys

from performers.cli import main

sys.exit(main())
