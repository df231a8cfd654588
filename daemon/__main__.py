import sys

from tfwarden.daemon.cli import main

sys.exit(main())
