"""``python -m dicom_node`` is ``dicom-node``."""

import sys

from dicom_node.cli import main

sys.exit(main())
