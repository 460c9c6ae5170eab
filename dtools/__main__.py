from dtools.cli import main

main()
