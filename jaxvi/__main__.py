import sys

from jaxvi.cli import main

sys.exit(main())
