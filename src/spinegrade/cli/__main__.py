import sys

from spinegrade.cli.main import main

sys.exit(main())
