import sys

from abtest.cli import main

sys.exit(main())
