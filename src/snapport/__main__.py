import sys

from snapport.cli.main import main

sys.exit(main())
