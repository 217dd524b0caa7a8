import sys

from ollamad.cli import main

sys.exit(main())
