from lfactory.cli import main

main()
