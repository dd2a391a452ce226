import sys

from continuations.cli import main

sys.exit(main())
