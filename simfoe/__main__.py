import sys

from simfoe.cli import main

sys.exit(main())
