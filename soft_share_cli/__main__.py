"""``python -m soft_share_cli``: the same as ``ssc``."""

from soft_share_cli.cli import main

main()
