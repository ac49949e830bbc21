from soft_share_cli.cli import main

main()
