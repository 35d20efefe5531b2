from ctr.cli.fast import main

main()
