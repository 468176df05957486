import sys

from fibuild.cli import main

sys.exit(main())
