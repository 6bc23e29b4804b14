from jaccli.cli.client import main

main()
