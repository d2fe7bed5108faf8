import sys

from lstminfer.cli import main

sys.exit(main())
