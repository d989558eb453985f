import sys

from liger.cli import main

sys.exit(main())
