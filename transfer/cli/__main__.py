"""``python -m transfer.cli`` = ``medtransfer``."""
from transfer.cli import main

raise SystemExit(main())
