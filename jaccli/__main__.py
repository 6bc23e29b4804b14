from jaccli.client import main

main()
