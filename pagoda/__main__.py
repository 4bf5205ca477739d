from pagoda.entrypoints.cli import main

main()
