from ctr.cli.app import main

main()
