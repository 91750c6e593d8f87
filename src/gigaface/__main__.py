"""`python -m gigaface ...`: the same as the `gigaface` command, for environments whose
scripts folder is not on PATH."""
from gigaface.cli import main

main()
