import sys

from mendlab.cli import main

sys.exit(main())
