"""`python -m exporter` runs the exporter, as the `footprint-exporter` script does."""

from exporter.cli import main

raise SystemExit(main())
