import sys

from reidsearch.cli import main

sys.exit(main())
